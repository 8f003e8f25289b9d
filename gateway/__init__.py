"""smtp-gateway: an SMTP submission gateway on Trio, forwarding mail to NATS JetStream."""

__version__ = "0.1.0"
