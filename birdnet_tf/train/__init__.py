"""train stage of birdnet-tf."""
