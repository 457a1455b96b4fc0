"""Static HTML gallery of explanations (built from a ``saliency explain`` run)."""
