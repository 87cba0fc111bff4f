"""Reading, converting and assigning checkpoint weights (official and diffusers formats)."""
