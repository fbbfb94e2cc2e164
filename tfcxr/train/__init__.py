"""Training: one custom loop (loop.py) runs the three stages (stages.py) under tf.distribute (strategy.py)."""
