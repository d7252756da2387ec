"""infer stage of birdnet-tf."""
