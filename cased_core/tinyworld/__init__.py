"""The synthetic tiny world used offline: its images and captions, its model's training, simulated cameras."""
