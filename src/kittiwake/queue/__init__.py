"""`target.queue`: the durable outbound queue (docs/target-queue.md).

* `queue.target` - the module: configuration, accepting a message durably;
* `queue.store` - the files of an entry and the durable write recipe;
* `queue.record` - an entry's metadata and its JSON form;
* `queue.runner` - the delivery loop: workers, schedule, quarantine;
* `queue.attempt` - one attempt through the target's delivery contract;
* `queue.progress` - what an attempt changes in an entry, notices owed;
* `queue.schedule` - the retry arithmetic;
* `queue.notices` - delivery status notifications through `bounce`;
* `queue.commands` - the operator commands (`kittiwake queue`).
"""
