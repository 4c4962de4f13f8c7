"""Defaults shared by every config: the full set of knobs, documented once.

Other configs start from ``get_config()`` here and change what differs.
"""

import ml_collections

from hme_jax.data import preprocessing


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0                           # parameters, data order and augmentation

  # --- data ----------------------------------------------------------------
  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "crohme"            # TFDS name: "crohme" or "crohme_synthetic"
  config.dataset.data_dir = ""              # TFDS data dir ("" = TFDS default)
  config.dataset.manual_dir = ""            # where data.zip lies ("" = <data_dir>/downloads/manual)
  config.dataset.train_split = "train"      # the split trained on
  config.dataset.eval_split = "2014"        # model selection
  config.dataset.test_splits = ("2014", "2016", "2019")  # those present are reported
  config.dataset.max_train_samples = 0      # 0 = all; >0 takes the first N (debugging)
  config.dataset.max_eval_samples = 0       # 0 = all; >0 validates on the first N

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
                                            # (hme_jax/data/device_data.py); one JAX process only
  config.input.worker_count = 0             # grain worker processes (0 = in the main process)
  config.input.prefetch = 2                 # batches prefetched per worker

  # --- augmentation (training only, deterministic per seed) ------------------
  config.augment = ml_collections.ConfigDict()
  config.augment.enabled = True             # False: training images as evaluation sees them
  config.augment.rotation_degrees = 3.0     # rotation, uniform in +- this many degrees
  config.augment.scale = 0.1                # relative scale jitter: 1 +- scale
  config.augment.shear = 0.15               # horizontal shear factor, uniform in +- this
  config.augment.brightness = 0.2           # the seed's ColorJitter
  config.augment.contrast = 0.2             # contrast jitter: 1 +- contrast
  config.augment.elastic_alpha = 3.0        # pixels of displacement at most; 0 disables
  config.augment.elastic_sigma = 10.0       # pixels over which it varies: at most 2 x alpha,
                                            # or strokes fold (8 over 5 tore them apart)
  config.augment.stroke_probability = 0.3   # thicken or thin the strokes
  # Paper: the ink drawn as a photographed or scanned page (hme_jax/data/paper.py), then normalised
  # back (preprocessing.normalise), as predict does with real photos; on the host, not with
  # config.input.device_resident.
  config.augment.paper_probability = 0.0    # share of training images put on paper; 0 = off
  config.augment.paper_scale = (0.5, 2.0)   # the ink's scale on the page, log-uniform in this range
  config.augment.pen_radius = 2             # pen thickened by up to this many px a side
  config.augment.ruling_probability = 0.5   # ruled paper (a third of it squared)
  config.augment.paper_rotation_degrees = 5.0  # the page turned by up to this much
  config.augment.shadow = 0.5               # uneven light and a shadow take up to this share of it
  config.augment.blur_sigma = 1.2           # px; Gaussian blur of up to this
  config.augment.noise_sigma = 6.0          # grey levels; sensor noise of up to this
  config.augment.jpeg_quality = 30          # JPEG at quality in [this, 95]; 0 = no JPEG

  # --- normalisation of images from outside the dataset (preprocessing.normalise) ----
  # The training split's ink, measured once (python benchmarks/ink_statistics.py): photos, scans and
  # drawings are brought to it. Defaults: CROHME train's.
  config.normalise = ml_collections.ConfigDict()
  config.normalise.stroke_width = preprocessing.CROHME_TRAIN.stroke_width    # px: (min, median, max)
  config.normalise.symbol_height = preprocessing.CROHME_TRAIN.symbol_height  # px: (p5, median, p95)

  # --- model -----------------------------------------------------------------
  config.model = ml_collections.ConfigDict()
  config.model.name = "crnn"                # "crnn" (CNN + BiLSTM, CTC) | "attention" (seq2seq)
  config.model.width_downsample = 2         # crnn: image columns per CTC frame (configs/vgg16.py);
                                            # attention: the encoder stride, 2 ** (dense_blocks + 1)
  config.model.conv_gradient = "auto"       # "auto" (= "matmul" on CPU, "xla" elsewhere) |
                                            # "matmul" | "xla": see hme_jax/models/conv.py
  # CRNN (name="crnn"): hme_jax/models/crnn.py, backbones.py.
  config.model.backbone = "vgg16"           # "vgg16" | "resnet18" | "small"
  config.model.batch_norm = True            # BatchNorm after each convolution
  config.model.height_collapse = "mean"     # "mean" | "max" | "flatten" over the remaining rows
  config.model.spatial_dropout = 0.3        # channel dropout on the feature map
  config.model.lstm_hidden = 256            # units per direction of each BiLSTM layer
  config.model.lstm_layers = 2              # stacked BiLSTM layers
  config.model.lstm_dropout = 0.5           # between LSTM layers
  config.model.classifier_dropout = 0.3     # before the per-frame classifier
  config.model.small_channels = (32, 64, 128)  # only for backbone="small"
  config.model.pretrained_path = ""         # local torchvision vgg16-*.pth / resnet18-*.pth
  config.model.freeze_stages = 0            # ResNet: number of early stages frozen
  # Attention encoder-decoder (name="attention"): hme_jax/models/attention.py, seq2seq.py;
  # CoMER's published sizes (configs/attention.py).
  config.model.growth_rate = 24             # DenseNet-B: channels each dense layer adds
  config.model.dense_layers = 16            # bottleneck layers per dense block
  config.model.dense_blocks = 3             # stride 2 ** (dense_blocks + 1)
  config.model.compression = 0.5            # channel reduction of each transition
  config.model.encoder_dropout = 0.2        # after each dense layer
  config.model.scan_dense_layers = False    # True: a dense block is one nn.scan layer
  config.model.remat_dense_layers = False   # True: nn.remat each dense layer (backprop recomputes)
  config.model.d_model = 256                # decoder width (the encoder is projected to it)
  config.model.num_heads = 8                # attention heads
  config.model.decoder_layers = 3           # post-norm Transformer decoder layers
  config.model.ffn_dim = 1024               # feed-forward width of a decoder layer
  config.model.decoder_dropout = 0.3        # in the decoder layers
  config.model.cross_coverage = True        # CoMER's ARM: previous layer's past attention
  config.model.self_coverage = True         # ... and this layer's own past attention
  config.model.coverage_channels = 32       # channels of the coverage convolution
  config.model.coverage_kernel = 5          # its kernel size
  config.model.label_smoothing = 0.0        # of the cross-entropy targets
  config.model.max_decode_length = 210      # longest decoded caption (the longest test one: 204)
  config.model.length_penalty = 1.0         # beam score = log p / (tokens + 1) ** length_penalty

  # --- optimisation ----------------------------------------------------------
  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 32              # global, over all devices
  config.train.num_epochs = 50              # passes over the training split (full batches)
  config.train.optimizer = "adam"           # "adam" | "adamw" | "adadelta"
  config.train.learning_rate = 5e-4         # peak learning rate (before the plateau scale)
  config.train.weight_decay = 0.0           # adamw / adadelta only
  config.train.schedule = "constant"        # "constant" | "warmup_cosine" (times the plateau scale)
  config.train.warmup_epochs = 0.0          # warmup_cosine: epochs of linear warm-up from 0
  config.train.grad_clip_norm = 5.0         # gradients clipped to this global norm
  config.train.plateau_factor = 0.5         # the learning-rate scale times this on a plateau
  config.train.plateau_patience = 2         # epochs without validation improvement
  config.train.compute_dtype = "auto"       # "auto" = bfloat16 on GPU/TPU, float32 on CPU
  config.train.log_every_steps = 50         # training loss to the log and TensorBoard
  config.train.eval_every_epochs = 1        # validate (and checkpoint) every N epochs and at the
                                            # end; 0 = never (checkpoint at the end only)
  config.train.checkpoint_every_steps = 0   # 0 = only when validating
  config.train.keep_checkpoints = 3         # the latest K; the best by ExpRate is kept too
  config.train.max_steps = 0                # >0 stops early (smoke runs)
  config.train.steps_per_dispatch = 1       # device-resident feed: up to this many consecutive
                                            # steps of one batch shape in one program (a loop on
                                            # the device); changes the data order
  config.train.init_from = ""               # fine-tuning: a trained model's variables to start from
                                            # (exported dir, work dir or "bundled"); same model + vocab
  config.train.max_seconds = 0.0            # >0: training wall-time budget of the work dir
                                            # (summed over resumes); validates and saves at it
  config.train.progress_bar = True          # tqdm progress bar on the first process
  config.train.compilation_cache_dir = "~/.cache/hme_jax/jax"  # JAX's persistent cache of
                                            # compiled programs, shared by resumed runs and
                                            # evaluate/predict; "" = off

  # --- evaluation ------------------------------------------------------------
  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 64               # global; rounded up to a multiple of the device count
  config.eval.decoder = "greedy"            # "greedy" | "beam"
  config.eval.beam_width = 10               # hypotheses kept per step (decoder="beam")
  config.eval.well_formed = False           # constrain the beam to valid LaTeX (CTC models)
  config.eval.max_length = 0                # beam search's longest hypothesis; 0 = the model's
                                            # (CTC: one token per frame; attention:
                                            # model.max_decode_length)

  # --- multi-host ------------------------------------------------------------
  config.distributed = False                # jax.distributed.initialize(): one process per host
  config.coordinator_address = ""           # "host:port" of process 0; "" = detected (TPU pods)
  config.num_processes = 0                  # processes in the run; 0 = detected
  config.process_id = -1                    # this process, 0 .. num_processes - 1; -1 = detected
  return config
