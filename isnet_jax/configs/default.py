"""Default ISNet configuration: the release's training settings (256 px, batch 8, 4 blocks).

Variants (``celeba.py``, ``places2.py``, ``demo.py``) import this file and override a few
fields. Any field can be overridden on the command line, e.g. ``--config.batch_size=4``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # --- Model -----------------------------------------------------------------------------
    config.model = ml_collections.ConfigDict()
    # "isnet" (the paper's model), "basemodel", "basemodel_ff" (Table 1 ablations), "unet".
    config.model.generator = "isnet"
    config.model.blocks = 4  # residual blocks per branch per stage (1..4)
    # Branch 0's channels (branch 1: 2, 4, 8, 16 times it). 32 is the release's and the only
    # width its weights fit; 8 (1/16 of the parameters) runs the pipeline's tests quicker.
    config.model.width = 32
    config.compute_dtype = "float32"  # "bfloat16" on TPU/GPU; parameters stay float32
    config.remat = False  # recompute generator activations in the backward pass
    # Start from trained weights (fine-tuning): a folder written by `python -m isnet_jax.convert`
    # (the official weights) or another training workdir (its latest step, or "DIR@STEP").
    # G's and D's weights and spectral-norm vectors are loaded; the optimiser states, the step
    # and the data order start fresh. Ignored (with a warning) when the workdir already holds a
    # checkpoint: resuming wins.
    config.init_from = ""
    # Initialisation of G's and D's convs (docs/reference/isnet.md, "Initialisation"): "release"
    # draws kernels from N(0, init_scale^2) as the release's init_weights() (0.001); the
    # "orthogonal" scheme makes every spectrally normalised kernel start as an isometry. Under
    # spectral norm the scale sets Adam's effective learning rate (about lr / init_scale).
    config.model.init = "release"
    config.model.init_scale = 0.001

    # --- Losses (release defaults = paper eq. 2) --------------------------------------------
    config.loss = ml_collections.ConfigDict()
    config.loss.gan_type = "hinge"  # "hinge" | "nsgan" | "lsgan"
    config.loss.l1_weight = 1.0
    config.loss.adversarial_weight = 0.1
    config.loss.feature_matching_weight = 10.0
    config.loss.perceptual_weight = 0.1
    config.loss.style_weight = 250.0
    # The demo's phase-in of G's adversarial and feature-matching terms (train.gan_ramp): their
    # weights are 0 before gan_start_step, then rise to the values above over gan_ramp_steps.
    # 0 and 0: on from the first step, as the release.
    config.loss.gan_start_step = 0
    config.loss.gan_ramp_steps = 0
    # VGG19 weights for the perceptual and style losses. "" (or "vgg19"): torchvision's ImageNet
    # VGG19 (vgg19-dcbb9e9d.pth), fetched, checked and converted on first use into the weights
    # cache ($ISNET_JAX_CACHE, default ~/.cache/isnet_jax; a gs:// folder serves a pod). Or a
    # path: that .pth, or the .npz (or its folder) `python -m isnet_jax.convert --vgg19` writes.
    config.loss.vgg_weights = ""
    config.loss.vgg_normalization = "none"  # the release feeds [0, 1] RGB unnormalised

    # --- Optimisation -------------------------------------------------------------------------
    config.learning_rate = 1e-4
    config.d_lr_ratio = 0.1  # discriminator lr = d_lr_ratio * learning_rate
    config.beta1 = 0.0
    config.beta2 = 0.9
    # "constant" (the release) or "cosine" decay to 0 at num_train_steps, after a linear
    # warm-up of warmup_steps from 0 (release: none).
    config.lr_schedule = "constant"
    config.warmup_steps = 0
    config.batch_size = 8  # global batch, split over all devices of all hosts
    # An update whose gradients are NaN or inf is never applied (and counted in the metric
    # skipped_update); this many in a row stop the run, naming the loss term.
    config.max_consecutive_skips = 10
    config.num_train_steps = 1_000_000
    config.seed = 42

    # --- Data -----------------------------------------------------------------------------------
    config.image_size = 256
    config.data = ml_collections.ConfigDict()
    # "tfds" (ArrayRecord data source), "folder", "flist", or "skimage" (bundled sample photos)
    config.data.source = "tfds"
    config.data.name = "celeb_a"  # TFDS name when source == "tfds"
    config.data.data_dir = ""  # TFDS data dir; "" means TFDS's default (or $TFDS_DATA_DIR)
    config.data.train_path = ""  # folder or .flist for source "folder" / "flist"
    config.data.eval_path = ""
    config.data.train_split = "train"
    config.data.eval_split = "test"
    config.data.num_workers = 2  # grain worker processes per host (0 = in-process)
    # Resume the data loader where the checkpoint left it (needs the same num_workers and
    # process count as the run that wrote it). False: the data order restarts from the seed.
    config.data.resume_position = True
    config.data.prefetch_buffer_size = 2
    # Threads reading and decoding inside each worker (PIL releases the GIL while decoding):
    # 1 overlaps decoding with the hand-over; more only pay with spare cores.
    config.data.read_threads = 1
    # source "skimage": records per epoch, and the smallest random crop (fraction of the
    # photo's shorter side) before the resize to image_size.
    config.data.skimage_num_images = 1000
    # source "skimage": the photos held out as the eval split (comma-separated names of
    # input_pipeline.SKIMAGE_PHOTOS); every other photo trains, and no crop of these ever does.
    config.data.skimage_eval_photos = "chelsea,coffee,rocket"
    config.data.random_crop_min = 0.3

    config.masks = ml_collections.ConfigDict()
    # "procedural" (generated irregular masks) or a mixing mode of the release:
    # "external", "external_or_block", "external_block_half", "block", "half".
    config.masks.mode = "procedural"
    config.masks.path = ""  # folder or .flist of mask images for the external modes
    config.masks.polarity = "hole_black"  # NVIDIA's irregular masks mark holes black
    # Binarisation after the bilinear resize: a pixel is white when > threshold (release: 0).
    config.masks.threshold = 0
    # Each data worker keeps the external masks it has read, bit-packed, up to this size.
    config.masks.cache_mb = 256
    config.masks.hole_ratio_min = 0.1  # band targeted by the procedural generator
    config.masks.hole_ratio_max = 0.6

    # --- Mesh -----------------------------------------------------------------------------------
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1  # -1: all devices on the data axis

    # --- Logging, checkpoints, evaluation ------------------------------------------------------
    config.log_every_steps = 100
    config.image_every_steps = 1000  # sample grids to TensorBoard and PNG
    config.checkpoint_every_steps = 5000
    config.max_checkpoints_to_keep = 3
    config.eval_every_steps = 10000
    config.eval = ml_collections.ConfigDict()
    config.eval.num_images = 256  # periodic evaluation during training: a fixed subset
    config.eval.batch_size = 8
    config.eval.mask_seed = 0  # deterministic evaluation masks per hole-ratio band
    config.eval.mask_path = ""  # a mask set to draw evaluation masks from ("" = procedural)
    config.eval.num_images_final = -1  # --mode=eval: -1 = the whole split
    # --mode=eval: FID and LPIPS per band, each computed only when switched on here.
    # FID: "inception" fetches pytorch-fid's pt_inception-2015-12-05-6726825d.pth into the
    # weights cache (as vgg_weights above) on first use; or a path: that .pth, or the folder /
    # .npz written by `python -m isnet_jax.convert --inception`. fid_method: "sqrtm"
    # (scipy.linalg.sqrtm, as pytorch-fid) or "eigh" (the same trace by symmetric
    # eigendecompositions, several times faster).
    config.eval.fid_weights = ""
    config.eval.fid_method = "sqrtm"
    # LPIPS v0.1: lpips_net "alex" or "vgg" alone fetches torchvision's alexnet-owt-7be5be79.pth
    # or vgg16-397923af.pth and lpips' weights/v0.1/alex.pth or vgg.pth into the weights cache.
    # Or both paths (known names work too: "alexnet", "vgg16", "lpips_alex", "lpips_vgg");
    # lpips_net "" then reads the net from the backbone file.
    config.eval.lpips_net = ""
    config.eval.lpips_backbone_weights = ""
    config.eval.lpips_lin_weights = ""
    # Classical baselines in every evaluation (--mode=eval and the periodic one), beside the
    # mean-colour fill on the same images and masks: OpenCV's cv2.inpaint, "telea" and / or
    # "navier_stokes" (comma-separated; "" for none).
    config.eval.classical_baselines = "telea,navier_stokes"
    config.eval.sheet_images = 8  # --mode=eval: images per band in eval/step_N/sheet_BAND.png

    return config
