"""The Textual explorer. Presentation only: it reads files through imatui.formats and numbers
through imatui.stats, in worker threads, and never parses or computes statistics itself."""
