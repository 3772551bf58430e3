"""`DeadLetterStore` adapters: where a push queue's (Cloud Tasks') dead letters are kept."""
