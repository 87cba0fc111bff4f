"""The diffusion maths shared by Stage B and Stage C (schedules, targets, guidance, samplers)."""
