"""The outbox: the queue every domain writes to (`enqueue`) and the sender reads from (claim,
lease, mark, release), and the interface of delivery kinds (`Kind`)."""
