"""Defaults shared by every config: the full set of knobs, documented once.

Other configs start from ``get_config()`` here and change what differs.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # --- data ----------------------------------------------------------------
  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "crohme"            # TFDS name: "crohme" or "crohme_synthetic"
  config.dataset.data_dir = ""              # TFDS data dir ("" = TFDS default)
  config.dataset.manual_dir = ""            # where data.zip lies ("" = <data_dir>/downloads/manual)
  config.dataset.train_split = "train"
  config.dataset.eval_split = "2014"        # model selection
  config.dataset.test_splits = ("2014", "2016", "2019")  # those present are reported
  config.dataset.max_train_samples = 0      # 0 = all; >0 takes the first N (debugging)
  config.dataset.max_eval_samples = 0

  # --- input geometry --------------------------------------------------------
  config.input = ml_collections.ConfigDict()
  config.input.height = 64                  # every image is resized to this height; 0 = each
                                            # image at its native scale, within max_height x max_width
  config.input.max_height = 256             # native scale only: taller images are shrunk to fit
  config.input.max_width = 1024             # wider images are squeezed (native: shrunk) to fit
  config.input.bucket_widths = (128, 256, 384, 512, 768, 1024)  # each a multiple of width_downsample
  config.input.canvases = ()                # ((height, width, label_length), ...) batch shapes,
                                            # nested, smallest first; replaces bucket_widths (and
                                            # is needed for native scale): see input_pipeline.BatchShapes
  config.input.sort_window = 16             # >0: batch samples of like size (sorted within windows
                                            # of this many shuffled batches); eval in size order
  config.input.cache_in_memory = True       # decode and crop every image once per run
  config.input.device_resident = False     # keep the fitted training split in device memory and
                                            # gather + augment batches inside the step
                                            # (hme_jax/device_data.py); one JAX process only
  config.input.worker_count = 0             # grain worker processes (0 = in the main process)
  config.input.prefetch = 2                 # batches prefetched per worker

  # --- augmentation (training only, deterministic per seed) ------------------
  config.augment = ml_collections.ConfigDict()
  config.augment.enabled = True
  config.augment.rotation_degrees = 3.0
  config.augment.scale = 0.1                # relative scale jitter: 1 +- scale
  config.augment.shear = 0.15
  config.augment.brightness = 0.2           # the seed's ColorJitter
  config.augment.contrast = 0.2
  config.augment.elastic_alpha = 3.0        # pixels of displacement at most; 0 disables
  config.augment.elastic_sigma = 10.0       # pixels over which it varies: at most 2 x alpha,
                                            # or strokes fold (8 over 5 tore them apart)
  config.augment.stroke_probability = 0.3   # thicken or thin the strokes

  # --- model -----------------------------------------------------------------
  config.model = ml_collections.ConfigDict()
  config.model.name = "crnn"
  config.model.backbone = "vgg16"           # "vgg16" | "resnet18" | "small"
  config.model.batch_norm = True
  config.model.width_downsample = 2         # image columns per CTC frame (see configs/vgg16.py)
  config.model.height_collapse = "mean"     # "mean" | "max" | "flatten" over the remaining rows
  config.model.spatial_dropout = 0.3
  config.model.lstm_hidden = 256
  config.model.lstm_layers = 2
  config.model.lstm_dropout = 0.5           # between LSTM layers
  config.model.classifier_dropout = 0.3
  config.model.small_channels = (32, 64, 128)  # only for backbone="small"
  config.model.pretrained_path = ""         # local torchvision vgg16-*.pth / resnet18-*.pth
  config.model.freeze_stages = 0            # ResNet: number of early stages frozen
  config.model.conv_gradient = "auto"       # "auto" (= "matmul" on CPU, "xla" elsewhere) |
                                            # "matmul" | "xla": see hme_jax/models/conv.py

  # --- optimisation ----------------------------------------------------------
  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 32              # global, over all devices
  config.train.num_epochs = 50
  config.train.optimizer = "adam"           # "adam" | "adamw" | "adadelta"
  config.train.learning_rate = 5e-4
  config.train.weight_decay = 0.0           # adamw / adadelta only
  config.train.schedule = "constant"        # "constant" | "warmup_cosine" (times the plateau scale)
  config.train.warmup_epochs = 0.0
  config.train.grad_clip_norm = 5.0
  config.train.plateau_factor = 0.5
  config.train.plateau_patience = 2         # epochs without validation improvement
  config.train.compute_dtype = "auto"       # "auto" = bfloat16 on GPU/TPU, float32 on CPU
  config.train.log_every_steps = 50
  config.train.eval_every_epochs = 1        # validate (and checkpoint) every N epochs and at the
                                            # end; 0 = never (checkpoint at the end only)
  config.train.checkpoint_every_steps = 0   # 0 = only when validating
  config.train.keep_checkpoints = 3         # the latest K; the best by ExpRate is kept too
  config.train.max_steps = 0                # >0 stops early (smoke runs)
  config.train.max_seconds = 0.0            # >0: training wall-time budget of the work dir
                                            # (summed over resumes); validates and saves at it
  config.train.progress_bar = True
  config.train.compilation_cache_dir = "~/.cache/hme_jax/jax"  # JAX's persistent cache of
                                            # compiled programs, shared by resumed runs and
                                            # evaluate/predict; "" = off

  # --- evaluation ------------------------------------------------------------
  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 64
  config.eval.decoder = "greedy"            # "greedy" | "beam"
  config.eval.beam_width = 10
  config.eval.well_formed = False           # constrain the beam to valid LaTeX

  # --- multi-host ------------------------------------------------------------
  config.distributed = False                # call jax.distributed.initialize()
  return config
