"""Model backends behind two small interfaces: TextBackend and EmbeddingBackend."""
