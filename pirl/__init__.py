"""pirl: online RL fine-tuning of flow-matching Vision-Language-Action policies."""
__version__ = "0.1.0"
