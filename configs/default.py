"""The embedded default: a synthetic web pool with known ground truth, no downloads.

Run: python -m tads_jax.main --config configs/default.py --workdir /tmp/tads
Override any field on the command line, e.g. --config.selection.fraction=0.2
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Stages run in this order; a finished stage whose config fingerprint matches is skipped.
  c.stages = ('ingest', 'encoder', 'embed', 'features', 'learn', 'select', 'evaluate',
              'export', 'report')

  c.pool = ml_collections.ConfigDict()
  c.pool.format = 'synthetic'   # 'synthetic' | 'webdataset' | 'datacomp'
  c.pool.shards = ''            # webdataset: brace pattern or glob of .tar shards
  c.pool.metadata = ''          # datacomp: brace pattern or glob of .parquet (npz beside)
  c.pool.embedding_model = 'b32'  # datacomp npz keys: 'b32' or 'l14'
  c.pool.image_size = 64        # side of the square images the encoder sees
  c.pool.ground_truth = ''      # optional parquet (uid, noise, on_task); synthetic sets it
  # The synthetic world (pool.format='synthetic'); fractions are of the pool.
  c.pool.synthetic = ml_collections.ConfigDict()
  c.pool.synthetic.num_samples = 10_000
  c.pool.synthetic.shard_size = 1_000
  c.pool.synthetic.trusted_size = 5_000    # clean pairs to train the reference encoder on
  c.pool.synthetic.offtask_fraction = 0.3  # concepts no task asks for
  # An off-task sample takes a value no task asks for in each of these: shape, colour and
  # texture. With shape alone (the world before issue 13; pass ('shape',) to get it back,
  # byte for byte) an off-task red hexagon was as relevant to the colors task as an
  # on-task red circle, so its ground-truth label contradicted the tasks.
  c.pool.synthetic.offtask_attributes = ('shape', 'color', 'texture')
  c.pool.synthetic.noise = ml_collections.ConfigDict(dict(
      misaligned=0.15, partial=0.08, corrupt_noise=0.03, corrupt_blur=0.03, blank=0.02,
      extreme_aspect=0.02, exact_dup=0.05, near_dup=0.05, text_in_image=0.04, spam=0.04))
  c.pool.synthetic.train_per_class = 20    # task feedback / prototypes
  c.pool.synthetic.eval_per_class = 50
  c.pool.synthetic.retrieval_train = 300
  c.pool.synthetic.retrieval_eval = 500

  # Reference encoder: a Hugging Face CLIP folder or a tads-jax checkpoint, or, with no
  # checkpoint, a CLIP trained on a trusted set (DFN-style) by the encoder stage.
  # Device mesh: axes 'data' and 'model'; data=-1 takes every device. Rules map the
  # parameters' logical axes to mesh axes: 'data_parallel', 'fsdp' or 'tensor_parallel'.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, model=1, rules='data_parallel'))

  c.encoder = ml_collections.ConfigDict()
  c.encoder.checkpoint = ''
  c.encoder.train_on = 'trusted'    # 'trusted' = the synthetic world's trusted set
  # The CLIP trained when there is no checkpoint: the 'small' preset's text transformer cut
  # down to what 2 CPU cores train in minutes, and a convolutional image tower (clip.CNNTower)
  # that sees the pool's 64 px images (its first two 3x3 convolutions stride 2, so it costs
  # what a 32 px input would beyond them). Why a CNN: every ViT recipe tried (patch or conv
  # stem, hard negatives, bigger batches, 100 epochs) learned colour and size but never shape
  # on this trusted set; this one learns shape (BENCHMARKS.md, issue 13). Flips and shifts
  # of up to 4 px keep its ~60 epochs of the 5,000 trusted pairs from memorizing them.
  c.encoder.model = 'small'
  c.encoder.image_size = 64
  c.encoder.model_overrides = ml_collections.ConfigDict(dict(
      vision_tower='cnn', vision_cnn=((32, 2), (32, 2), (64, 1), (64, 2), (128, 1), (128, 2)),
      embed_dim=128, text_width=128, text_layers=3, text_heads=4, text_mlp_dim=512))
  c.encoder.context_length = 24     # synthetic captions are short
  c.encoder.vocab_size = 2000       # BPE tokens learned on the trusted captions
  c.encoder.batch_size = 128
  c.encoder.samples_seen = 307_200  # 2,400 steps: 61 epochs of the 5,000 trusted pairs
  c.encoder.lr = 5e-4               # 1e-3 learned shape no faster (0.62 vs 0.67 at 1,200 steps)
  c.encoder.warmup = 100
  c.encoder.augment_flip = True
  c.encoder.augment_shift = 4       # pixels
  # Terms added to the CLIP loss (train.TrainConfig), each a weight; 0 turns one off.
  # word_loss: each image's softmax over the words that word_min_count trusted captions
  # use, against its caption's words (SuperClass-style); view_loss: each image against a
  # second view of itself moved by up to view_shift px and lit by up to view_brightness
  # grey levels (SLIP's two-view term). word_loss=1.0 took zero-shot textures from 0.52 to
  # 0.65, shapes from 0.74 to 0.86 and relevance AUROC from 0.96 to 1.00 at 1.02x the step
  # time (BENCHMARKS.md, sessions 21 and 22); 0.0 gives the reference before session 22.
  # view_loss costs 1.75x, and with both SemDeDup reached precision 0.77 at recall 0.88
  # (0.8 at 0.9 is the target), so it stays off.
  c.encoder.word_loss = 1.0
  c.encoder.word_min_count = 10
  c.encoder.view_loss = 0.0
  c.encoder.view_shift = 2
  c.encoder.view_brightness = 10
  c.encoder.dtype = 'float32'
  c.encoder.checkpoint_every = 200

  # The embed stage: reference-CLIP embeddings of the pool and of the tasks (per shard,
  # resumable).
  c.embed = ml_collections.ConfigDict(dict(
      dtype='float32',  # 'bfloat16' on TPUs / AMX CPUs (float32 accumulation and outputs);
                        # slower than float32 on CPUs without bf16 hardware
      batch_size=64,    # rows per jitted step, rounded up to a multiple of mesh.data
      workers=2))       # image decode threads (not in the fingerprint)

  # How the stages that decode the pool's images again read them (the features stage's
  # image operators, the pixel proxy's image cache): a Grain pipeline over the shards' tars
  # (data/grain_source.py). Not in any fingerprint: it does not change what they compute.
  # grain_workers: decode processes (0: a decode thread in the stage's own process). 0,
  # because on 2 cores the default world's per-shard features pass ran at 0.92-0.98x the
  # speed of the reader before Grain with 0, and at ~0.7x with 1 or 2 (starting workers and
  # sending 64 px images back costs more than decoding them); workers pay on larger JPEGs
  # with cores to spare (tools/bench_decode.py).
  c.data = ml_collections.ConfigDict(dict(grain_workers=0))

  # The features stage: quality operators, task relevance, k-means clusters and weights,
  # SemDeDup and exact-duplicate flags, one row per pool sample.
  c.features = ml_collections.ConfigDict(dict(
      operators=('width', 'height', 'aspect_ratio', 'sharpness', 'contrast', 'colourfulness',
                 'entropy', 'near_uniform', 'characters', 'words', 'alnum_ratio',
                 'special_char_ratio', 'word_repetition', 'char_repetition', 'clip_score',
                 'flipped_clip_score', 'caption_specificity'),
      chunk=256,                 # rows per jitted operator call
      kmeans_k=100,              # diversity clusters (capped at the pool size)
      kmeans_iters=20,
      alpha=0.5,                 # cluster weight (|C|/N)**-alpha; 0 turns it off
      # SemDeDup flag: duplicates at cosine >= 1 - eps. 0.01 flags 1,819 of the default
      # world's 10,000 (precision 0.53, recall 0.97 against its near and exact copies); 0.05
      # flagged 5,934 (0.27, 1.00), and TADS kept out of those lost on the validation
      # split (0.6521 against 0.7340 at 0.01; BENCHMARKS.md, session 16).
      semdedup_eps=0.01,
      relevance_top_m=1,         # mean of the top-m prototype cosines (1 = max)
      # 'zscore': each prototype's cosines as z-scores over the pool before the top-m, so no
      # class or centroid wins by sitting close to much of the pool; 'none': raw cosines
      # (the validation sweep's choice here: 'zscore' 0.7513 vs 0.7517, BENCHMARKS.md).
      relevance_calibration='none',
      # True: also relevance_<task>_target, a sample's image against the task's train images
      # (its largest cosine to any of them: NormSim_inf per task), beside the prototypes
      # (the validation sweep's choice: 0.6011 +- 0.0101 vs 0.5835 +- 0.0242 without,
      # pixel proxy, BENCHMARKS.md).
      target_relevance=True,
      retrieval_prototypes=32,   # k-means prototypes per side of a retrieval task
      # Settings of the operators, {operator: {setting: value}}: each operator's own
      # parameters (scoring/quality.py), at their defaults here so that the command line can
      # set them (--config.features.operator_settings.near_uniform.threshold=0.05).
      # vocab_share runs only with a vocabulary: operator_settings.vocab_share.vocab, a list
      # of lowercase words (e.g. quality.words_from_bpe_vocab of the reference tokenizer).
      # The pool-wide signals (relevance, clusters, duplicates: features.SIGNALS) read the
      # fields above.
      operator_settings=ml_collections.ConfigDict(dict(
          entropy=dict(bins=256),                # luminance histogram bins
          near_uniform=dict(threshold=0.02),     # luminance std under it: a blank image
          word_repetition=dict(n=2),             # word n-grams
          char_repetition=dict(n=10)))))         # character n-grams (Data-Juicer's 10)

  # Downstream tasks: a list of {name, kind, classnames, templates, train, eval}, a path to
  # a JSON file with that list, or 'synthetic' for the synthetic world's own tasks.
  c.tasks = 'synthetic'

  c.selector = ml_collections.ConfigDict()
  c.selector.name = 'tads'

  # DataComp's CLIP-score baseline: None = top selection.fraction by score; a cosine =
  # keep every sample at or above it (a filter of its own size).
  c.clip_score = ml_collections.ConfigDict(dict(
      threshold=ml_collections.config_dict.placeholder(float)))
  # DataComp's other baselines (mlfoundations/datacomp baselines/apply_filter.py).
  c.basic_filter = ml_collections.ConfigDict(dict(
      min_side=56,      # DataComp: 200 px, i.e. 200/224 of a ViT's input; the same share of
                        # this world's 64 px renders (so only extreme-aspect crops fail it)
      max_aspect=3.0,   # max(w/h, h/w) <= 3
      min_words=3,      # DataComp: str.split() words > 2
      min_chars=6))     # DataComp: characters > 5
  c.laion2b = ml_collections.ConfigDict(dict(
      threshold=0.28))  # cosine under OpenAI's CLIP B/32; another reference needs its own
  c.image_based = ml_collections.ConfigDict(dict(
      k=100,            # DataComp: 100k clusters for the 12.8M small pool (~128 per cluster)
      iters=20))        # faiss niter in DataComp's clustering script
  c.image_based_clip_score = ml_collections.ConfigDict(dict(
      clip_fraction=0.3))  # DataComp README: --arch l14 --fraction 0.3

  # SemDeDup (facebookresearch/SemDeDup): spherical k-means on pool image embeddings, then
  # inside each cluster drop images with cosine >= 1 - eps to a kept one, visiting the
  # farthest from the centroid first (their keep_hard). A filter: selection.fraction ignored.
  c.semdedup = ml_collections.ConfigDict(dict(
      k=100,          # theirs: 50_000 for LAION-440M (~9k/cluster); capped at the pool size
      iters=100,      # clustering_configs.yaml niter: 100
      eps=0.05,       # their code sweeps eps_list ~0.01-0.07
      init='random'))  # faiss.Kmeans default init ('kmeans++' also accepted)
  # NormSim_p (Wang et al. 2024): p-norm of the image's cosines to all tasks' train images.
  c.normsim = ml_collections.ConfigDict(dict(
      p=float('inf')))  # 2 or inf; their best is NormSim_inf(Target) (run2.sh --norm 100)
  # negCLIPLoss (Wang et al. 2024): CLIP score minus tau/2 (LSE_i2t + LSE_t2i) over random
  # batches, averaged over `batches` partitions of the pool.
  c.negclipscore = ml_collections.ConfigDict(dict(
      temperature=0.01,   # theirs: 0.01 = CLIP's logit scale 100
      batch_size=32768,   # theirs; a pool smaller than this is a single batch
      batches=10))        # K: their runs use average_num=10
  # negCLIPLoss top ncl_fraction, then NormSim_inf to the budget among those. The paper
  # keeps 2/3 of its negCLIPLoss top (30% -> 20% of DataComp-medium); the same ratio at
  # this config's 36% is 54%. fraction=None: the budget is selection.fraction.
  # The CLIP-powered selector (Yang et al., ICLR 2025; selectors/clip_powered.py).
  c.clip_powered = ml_collections.ConfigDict(dict(
      adapter_steps=300,      # ours: Adam steps of the linear adapters on the task train splits
      adapter_batch=256,      # ours: samples (classification) / caption pairs per task per step
      adapter_lr=1e-4,        # ours
      temperature=0.07,       # InfoNCE temperature (CLIP's initial value)
      neighbours=10,          # K of SDS (mean distance to the K nearest in the same cluster)
      mask_scale=100.0,       # paper: m = sigmoid(100 d)
      mask_init=0.01,         # paper: d initialized at 0.01
      beta=0.1,               # paper: weight of the SDS term
      gamma=2.0,              # paper: weight of the count term |count_STE(m) - k| / N
      lr=1e-3,                # paper: SGD learning rate
      momentum=0.9,           # paper: SGD momentum
      tol=1e-3,               # paper: stop once the count term is below this
      max_steps=1_000_000,    # ours: guard; steps grow ~0.055 N with the paper's constants
      chunk=1024,             # ours: kNN block rows (memory ~ chunk x (chunk + K) floats)
      groups='cluster'))      # SDS groups: 'cluster' (a pretraining pool) | 'label' (the
                              # paper's labelled set, tools/labelled_to_pool.py)
  # ClipCov (Joshi et al., AISTATS 2024; selectors/clipcov.py).
  c.clipcov = ml_collections.ConfigDict(dict(
      easiness=2.0,      # authors' notebook: 2 x the pair's own cosine
      # None: every image joins its best task class (the paper); a cosine: images below it
      # form their own far partition.
      min_cosine=ml_collections.config_dict.placeholder(float),
      normalize=True,    # authors' notebook: cross terms divided by the class size
      block=64,          # ours: greedy candidates per round (exact greedy either way)
      chunk=1024))       # ours: rows per block of the pairwise term
  c.ncl_normsim = ml_collections.ConfigDict(dict(
      ncl_fraction=0.54,
      fraction=ml_collections.config_dict.placeholder(float),
      p=float('inf'),
      temperature=0.01, batch_size=32768, batches=10))

  # TADS: a value function over the standardized features, started at a weak-supervision
  # prior and meta-learned against the tasks' train splits (tads_jax/value.py, meta.py).
  c.tads = ml_collections.ConfigDict()
  # The feature groups the value function reads (value.GROUPS: quality, relevance,
  # diversity). Diversity (k-means cluster weights, duplicate flags) is left out: the
  # validation sweep over 3 validation draws chose that (0.7465 against 0.7437 with it;
  # BENCHMARKS.md, session 18), and tads.dedup below keeps duplicates out either way.
  c.tads.groups = ('quality', 'relevance')
  c.tads.prior = ml_collections.ConfigDict(dict(quality=1.0, relevance=1.0, diversity=1.0))
  c.tads.hidden = (32,)           # the value MLP's hidden widths (its output starts at 0)
  # 'additive': V = linear . z + MLP(z); 'per_task': V = diversity + logsumexp over tasks of
  # (task relevance + exp(trade_t) quality) + MLP(z), each task trading quality against its
  # relevance at its own learned rate (tads_jax/value.py). The validation sweep kept
  # 'additive' (per_task 0.7472 vs 0.7517, BENCHMARKS.md issue 14 item 2).
  c.tads.value_form = 'additive'
  # 'prior': each feature the prior gives a sign keeps its linear weight on that side of
  # zero (0 allowed) through meta-learning (tads_jax/value.py ValueFunction.constrain);
  # 'free': meta-learning may flip any of them. 'prior' since session 22: the 3-draw
  # validation round on the word-loss reference put it ahead of 'free' on every draw
  # (+0.0112 +- 0.0100 paired over 9 (draw, seed) pairs), which the rule fixed in session
  # 19 adopts (BENCHMARKS.md, session 22).
  c.tads.linear_signs = 'prior'
  # Quality features whose both tails are bad (value.ValueFunction.two_sided): V also
  # weighs |z| of each, starting at a negative prior. () = none. The sweep's 'two_sided'
  # (sharpness, contrast and entropy, the pixel statistics a blurred, a noisy or a blank
  # image sits at either end of) lost on the 3-draw validation round of session 19
  # (0.7419 against 0.7514; BENCHMARKS.md).
  c.tads.two_sided = ()
  # Share of each task's train split held out as a validation split (per class for
  # classification, by image for retrieval; seeded by `seed` and the task's name): settings
  # are chosen on it (evaluate.split='validation', tools/tads_sweep.py), the eval splits
  # only report. Named for TADS, but the cut applies to every selector's view of the tasks
  # (features' relevance prototypes, NormSim targets, meta-learning feedback, any
  # selector's tasks), so that comparisons stay fair. 0 = no cut: every stage reads the
  # whole train split, as before the field existed. The default run keeps 0: its settings
  # were chosen with 0.25 (15 train and 5 validation examples per class of the default
  # world), then, as one refits on train + validation once settings are chosen, every
  # selector fits on the whole train split.
  c.tads.validation_fraction = 0.0
  # The seed of that cut (None: config.seed). Another seed draws another validation split
  # of the same world: tools/tads_sweep.py --draws K scores each candidate on K of them, so
  # that a choice does not rest on which few examples one draw held out.
  c.tads.validation_seed = ml_collections.config_dict.placeholder(int)
  # A hard filter before the value function: only the top `fraction` of the pool by a
  # features column is ranked (and meta-learned on), as DataComp's filter-then-rank
  # baselines and ncl_normsim do; a pattern takes the largest of the columns it matches.
  # fraction None: no gate. Here NormSim_inf to the tasks' train images (the largest
  # target-relevance column) passes 72%, twice the budget: the validation sweep's choice
  # (0.6103 +- 0.0205 against 0.6011 +- 0.0101 without a gate, within the noise; a
  # clip_score gate lost: 0.5736 at 72%, 0.5432 at 54%; pixel proxy, BENCHMARKS.md).
  c.tads.gate = ml_collections.ConfigDict(dict(
      column='relevance_*_target',
      fraction=0.72,
      # A second pass in series (None: none): of the rows the first passed, the top
      # then_fraction of the pool by then_column (e.g. 'clip_score' at 0.54, ncl_normsim's
      # quality pass, the default from session 16 to 21). None since the reference learns
      # with the word loss: on it, the 3-draw validation round put 'no_then' ahead of that
      # pass by +0.0144 +- 0.0179 paired over 9 (draw, seed) pairs, 2.41 standard errors,
      # which the rule fixed in session 19 (ahead on every draw, or a paired mean above 2
      # standard errors) adopts (BENCHMARKS.md, sessions 21 and 22).
      then_column=ml_collections.config_dict.placeholder(str),
      then_fraction=ml_collections.config_dict.placeholder(float)))
  # How many value functions are meta-learned, each from its own seed (1: one, from the
  # run's seed); K > 1 scores by the mean of their standardized values. 3 and 5 lost on
  # the validation split (0.5714, 0.5808 against 0.5899; BENCHMARKS.md, session 14).
  c.tads.ensemble = 1
  # Duplicates kept out of TADS's subset (selectors.DEDUP: 'none' | 'exact' | 'semantic' |
  # 'both'; one copy of each group stays), whatever their value: meta-learning alone kept
  # 59% of the exact and 54% of the near copies. 'both' (with features.semdedup_eps 0.01)
  # was the validation sweep's choice: 0.7340 against 0.7204 without and 0.7185 for
  # 'exact' (embedding proxy; BENCHMARKS.md, session 16).
  c.tads.dedup = 'both'
  # The meta-learning settings below were chosen by tools/tads_sweep.py on that validation
  # split (best validation mean of 14 candidates: 3x and 1/3 of steps, value_lr and tau,
  # each group left out, each prior weight doubled; BENCHMARKS.md, issue 14 item 1). The
  # steps were then chosen again with the pixel proxy scoring the validation split (a CLIP
  # trained from scratch, DataComp's protocol, not a model like the one TADS meta-learns
  # against): 300 against 900 and 100 (BENCHMARKS.md, issue 14, session 10). The proxy's
  # text side was chosen the same way: 'words' against 'reference' (session 11).
  c.tads.meta = ml_collections.ConfigDict(dict(
      steps=300,                  # meta steps; 0 = the prior alone (no meta-learning)
      batch_size=256,             # pool samples per meta step
      unroll=4,                   # K differentiable proxy updates per meta step
      inner_optimizer='adam',     # 'sgd' | 'adam' (both differentiable)
      inner_lr=1e-3,
      # w = softmax(V / tau) over the batch. 1/3: the fourth 3-draw validation round's
      # choice at session 19 (0.7544 against 0.7514 at 1; BENCHMARKS.md), a lead of
      # +0.0030 +- 0.0226 paired, ahead on one draw of three: within the noise.
      tau=1 / 3,
      # 3e-2: the 3-draw validation sweep's choice at session 18 (0.7514 against 0.7465
      # at 1e-2; BENCHMARKS.md). Its draws spread widely (0.720-0.787).
      value_lr=3e-2,
      value_weight_decay=1e-4,
      task_weight_rate=1.0,       # task weights softmax(rate * L / L0); 0 = uniform
      task_batch_size=256,
      head='mlp',                 # the proxy's residual MLP heads on the reference embeddings
                                  # (the image's; the text's too with text='reference')
      # The proxy's text side: 'words' (a word-bag tower learned from scratch on the
      # captions' words, as a CLIP trained on the subset learns its text side) or
      # 'reference' (a head on the reference's text embeddings); tads_jax/meta.py TEXTS.
      text='words',
      checkpoint_every=100))

  # FLYT (Shechter & Carmon 2025, formll/FLYT): a GLU scoring head over the concatenated unit
  # reference embeddings, meta-learned through ONE differentiable AdamW step of the proxy
  # (tads_jax/selectors/flyt.py). Their values where they carry over to this scale.
  flyt_meta = dict(
      steps=300,                # theirs 5000 x 4096 on 128M; here ~8 epochs of the pool, as TADS
      batch_size=256,           # pool samples per step (theirs 4096)
      unroll=1,                 # FLYT: one differentiable step
      inner_optimizer='adam',
      inner_lr=1e-3,            # the TADS proxy's (their 5e-5 fine-tunes a pretrained ViT-B/32)
      inner_weight_decay=0.2,   # their DifferentiableAdamW: open_clip's wd on matrices only
      tau=1.0,                  # w = softmax(scores), no temperature
      value_lr=1e-2,            # theirs 1e-3 over 5000 steps; at 300 the head barely moves
      value_warmup=10,          # theirs 100 of 5000 steps
      value_weight_decay=0.2,   # their scoring AdamW's wd
      value_grad_clip=0.0,      # theirs: no clip
      task_weight_rate=0.0,     # theirs: the tasks' gradients averaged
      task_batch_size=256,      # theirs 3072 downstream samples per step
      templates='random',       # one random template per class per step
      outer_logit_scale=2.65926,  # their --downstream_logit_scale (log 1/0.07), fixed here
      head='mlp',               # the proxy, as TADS
      checkpoint_every=100)
  c.flyt = ml_collections.ConfigDict(dict(
      hidden_mult=1.0,          # GLU hidden width = hidden_mult * 2D (their hidden_dim_mod)
      layers=1,                 # GLU layers (their n_scoring_layers)
      activation='silu',        # 'silu' | 'relu' (their glu_activation)
      init='default',           # 'default' (torch Linear init) | 'cosine' (their cos_sim_init)
      noise_std=0.01,           # 'cosine' init only
      meta=ml_collections.ConfigDict(flyt_meta)))
  # M-FLYT: a linear layer over the standardized scores of these selectors, trained as FLYT.
  c.mflyt = ml_collections.ConfigDict(dict(
      inputs=('clip_score', 'normsim', 'negclipscore'),  # any score selectors, learners too
      meta=ml_collections.ConfigDict(flyt_meta)))

  c.selection = ml_collections.ConfigDict()
  c.selection.fraction = 0.36   # TADS keeps 36% of CC12M in the paper
  # 'topk' | 'soft_cap' | 'hard_cap' (FLYT's Soft / Hard Cap Sampling, with repeats)
  c.selection.method = 'topk'
  # Duplicates never selected, whatever the scores: 'none' | 'exact' | 'semantic' | 'both'
  # (the features stage's flags; one copy of each group stays eligible). 'none' keeps every
  # published selector as its source defines it.
  c.selection.dedup = 'none'
  # soft_cap: the same number of entries as topk, drawn in batches from
  # softmax(score / temperature), each draw lowering that sample's logit by `penalty`.
  c.selection.soft_cap = ml_collections.ConfigDict(dict(
      batch_size=256, penalty=0.15, temperature=1.0))
  # hard_cap (FLYT's Hard Cap Sampling): the same number of entries, drawn with replacement
  # from softmax(score / temperature), no sample more than `cap` times.
  c.selection.hard_cap = ml_collections.ConfigDict(dict(
      batch_size=256, cap=15, temperature=1.0))   # cap 15: their examples.ipynb

  # Proxy evaluation (DataComp rule: fixed samples seen whatever the subset size), trained
  # from scratch once per seed; eval.json holds mean and std over the seeds and the proxy.
  #   'embedding': two heads on the frozen reference embeddings (the fields below): cheap,
  #                but it inherits the reference's blind spots.
  #   'pixels':    a small CLIP on the subset's images and captions (evaluate.pixels), as
  #                DataComp trains: the faithful one, and the costlier.
  c.evaluate = ml_collections.ConfigDict()
  c.evaluate.proxy = 'embedding'
  c.evaluate.samples_seen = 200_000
  c.evaluate.seeds = 3
  c.evaluate.batch_size = 256
  c.evaluate.lr = 5e-4
  c.evaluate.warmup = 100       # steps of linear warmup before the cosine decay
  c.evaluate.head = 'mlp'       # 'mlp' (residual: starts at the reference space) | 'linear'
  # The tasks' split scored: 'eval' (to report) | 'validation' (the part of the train
  # splits that tads.validation_fraction > 0 holds out; to choose settings on).
  c.evaluate.split = 'eval'
  # Subsets evaluated beside the selected one, at the same budget (top-k at
  # selection.fraction): 'full' (every pool sample once) or any non-learning selector.
  c.evaluate.baselines = ('full', 'random', 'clip_score')
  # The pixel proxy (evaluate.proxy='pixels', and the pixel check below): a CLIP trained
  # from scratch on the subset's images and captions, with the reference encoder's shape:
  # its CNN image tower at the pool's 64 px and its text tower (24 tokens, its tokenizer).
  # The conv-stem ViT that was the pixel proxy before never learned shape from the default
  # world's clean data (shapes 0.13 on the clean on-task subset; the CNN 0.30-0.32), so it
  # could not tell on-task data from the rest (BENCHMARKS.md, issue 13 item 4); it stays
  # in configs/pixels_vit.py. Its own budget: samples_seen here, not
  # evaluate.samples_seen, since a pixel sample costs ~60x an embedding one; one seed on
  # the 36% subset takes about a minute on 2 idle CPU cores.
  c.evaluate.pixels = ml_collections.ConfigDict(dict(
      model='small',
      model_overrides=ml_collections.ConfigDict(c.encoder.model_overrides.to_dict()),
      image_size=64,          # the pool is decoded once at this size (evaluate_cache/)
      context_length=24,      # synthetic captions are short
      batch_size=128,
      samples_seen=40_000,    # ~11 epochs of the 36% subset
      # CLIP from scratch sits at loss log(batch) until the towers align; at the reference
      # encoder's 1e-3 / 50 warmup steps the conv-stem proxy fell back onto that plateau
      # and never left it (chance metrics); 5e-4 / 100 left it by step ~100 (BENCHMARKS.md).
      lr=5e-4,
      warmup=100,
      weight_decay=0.2,       # open_clip's
      b2=0.98,                # CLIP's AdamW
      eps=1e-6,
      dtype='float32',        # 'bfloat16' on accelerators
      checkpoint_every=100))  # steps; a killed seed resumes from here
  # The pixel check: with the embedding proxy, also train the pixel proxy (evaluate.pixels,
  # as evaluate.proxy='pixels' does) on the selected subset and the baselines named here
  # (each one of evaluate.baselines), for `seeds` seeds; eval.json 'pixel_check'. The pixel
  # proxy over every baseline and seed does not fit the 15-minute demo, so the demo checks
  # the selected subset against clip_score at one seed each (about 2.5 minutes; at 2 seeds,
  # 5 minutes, the demo took 16 min 32 s on an Intel Xeon 2-core machine, BENCHMARKS.md);
  # configs/pixels_cnn.py runs the full pixel comparison at 3 seeds. seeds=0: off (and the
  # stage's fingerprint is what it is without the check).
  c.evaluate.pixel_check = ml_collections.ConfigDict(dict(seeds=1, baselines=('clip_score',)))

  c.export = ml_collections.ConfigDict()
  c.export.shards = False       # also write the subset as resharded webdataset tars
  c.export.shard_size = 10_000

  # Several processes (hosts) on one pool (tads_jax/distributed.py): each reads the shards
  # with index % process_count == process_index; pool-wide quantities come from
  # collectives and process 0 writes the pool-wide outputs. Unset fields come from
  # TADS_COORDINATOR_ADDRESS, TADS_NUM_PROCESSES and TADS_PROCESS_ID, else from JAX's own
  # detection (Cloud TPU pod, Slurm, Open MPI, Kubernetes).
  c.distributed = ml_collections.ConfigDict(dict(
      # False | True | 'auto' (join when the environment shows a multi-process job); typed
      # object so that --config.distributed.enabled=auto parses as well as True.
      enabled=ml_collections.FieldReference(False, field_type=object),
      coordinator_address='',     # 'host:port' of process 0, e.g. '10.0.0.1:8476'
      num_processes=ml_collections.config_dict.placeholder(int),
      process_id=ml_collections.config_dict.placeholder(int),
      # A process silent this long (killed, hung) makes the others abort, so that the job
      # can be restarted and resume (JAX's default).
      heartbeat_timeout_s=100))
  return c
