"""Model configs (torch-free) and factories."""
