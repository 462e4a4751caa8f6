"""Pool readers, task loaders, the synthetic world and the subset writers."""
