"""The reference plugin client: applies deltas to a mailbox folder and sends through SMTP,
acknowledging each delta only once its effect is durable."""
