"""`leveretctl` (also `leveret ctl`): rabbitmqctl's verbs and output over the management HTTP API.

A client only: it talks HTTP to a broker's management listener (Leveret's or RabbitMQ's, with the same
paths), never to the broker's internals. `arguments` parses the command line, `endpoint` finds the API,
`client` speaks HTTP, `columns` and `output` turn API objects into rabbitmqctl's tables, and the verbs live
in `listing` (list_*), `admin` (the writes) and `nodes` (status, cluster_status).
"""
