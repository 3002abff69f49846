"""The running engine: frame protocols, mailboxes, pools, the render loop, sink threads, timings."""
