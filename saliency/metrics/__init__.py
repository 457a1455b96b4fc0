"""Attribution-quality metrics, batched on the model's device."""
