"""The workstation daemon: watches exports and the snapshot drop folder, keeps the index
current, polls on the events' schedule and serves plugin clients, composed of the same
functions the command line and replay call (never a second decision path)."""
