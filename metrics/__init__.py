"""cascadekit.metrics: reconstruction quality metrics (PSNR, SSIM, LPIPS, FID) and reports."""
