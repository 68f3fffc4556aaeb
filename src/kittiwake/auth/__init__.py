"""Authentication providers: who may log in with which password."""
