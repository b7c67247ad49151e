"""The actor runtime: agents, mailboxes, broadcast, supervision."""
