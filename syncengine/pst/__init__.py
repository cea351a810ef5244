"""A writer of Unicode PST files (MS-PST): ndb (blocks, pages, B-trees), ltp (heaps,
property and table contexts) and writer (store, folders, messages)."""
