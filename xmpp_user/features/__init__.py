"""One module per XMPP feature: stanza builders and reply readers, no I/O."""
