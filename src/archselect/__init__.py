"""archselect: differentiable NAS with swappable architecture selection."""
__version__ = "0.1.0"
