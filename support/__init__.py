"""What the tests and the benchmarks share, kept out of both: tiny models and adapters written
on the fly, the servers and services a test starts (the service on a real port, PostgreSQL, an
S3 API server, a Ray application), HTTP and browser helpers. The service never imports it."""
