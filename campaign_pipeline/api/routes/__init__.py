"""The API's routes, one module per resource; `create_app` includes their routers in this order.

`health` (`/api/health`), `sqs` (`/api/campaigns/sqs-status`, before the campaign routes whose
`{campaign_id}` would take its path), `campaigns` (a campaign's status, process-messages),
`control` (pause, resume, cancel) and `preview`.
"""
