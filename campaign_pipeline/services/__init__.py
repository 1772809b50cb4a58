"""What the command line and the HTTP API share: each builds a document or does one thing once.

`trigger` (may a run take the campaign, then launch one), `dagster_client` (the webserver's
GraphQL API), `status` (one campaign as an operator sees it), `preview` (its payloads, built as
a run builds them, sent nowhere) and `sqs_health` (whether the queue answers, and its depth).
The CLI prints these documents and the API answers with them; neither builds its own.
"""
