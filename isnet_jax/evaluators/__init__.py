"""What ``--mode=eval`` measures (``isnet_jax.evaluate`` runs them): the paper's metrics
(``metrics``), the classical baselines (``classical``), FID and LPIPS (``fid``, ``lpips``, and
per hole-ratio band ``fid_lpips``), and image sheets for people (``sheets``)."""
