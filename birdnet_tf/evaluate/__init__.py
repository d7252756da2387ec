"""evaluate stage of birdnet-tf."""
