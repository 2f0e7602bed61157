"""Running the service past one machine: the Ray Serve application (app/deploy/ray.py)."""
