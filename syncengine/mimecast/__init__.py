"""The Mimecast poller: the documented archive and directory API becomes snapshot folders
and directory syncs in exactly the formats of formats.md, applied by the engine's own code."""
