"""data stage of birdnet-tf."""
