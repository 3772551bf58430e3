"""Task memos: what a message's earlier attempts already paid for (see `ports.TaskMemos`)."""
