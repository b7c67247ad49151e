"""Redis clients: the sync one on redis-py, and the trio-native async one."""
