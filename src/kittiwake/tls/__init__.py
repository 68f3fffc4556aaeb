"""TLS for endpoints and clients.

* `tls.directive` - the `tls` and `tls_client` directives: versions,
  ciphers, curves, SNI, and the `ssl.SSLContext`s built from them;
* `tls.loaders` - the certificate loader modules (`tls.loader.file`,
  `tls.loader.self_signed`) that say where certificates come from.
"""
