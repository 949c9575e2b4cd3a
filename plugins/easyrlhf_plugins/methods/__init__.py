"""Built-in alignment method plugins."""
