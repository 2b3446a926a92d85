# ==================================================================================================
# RUN MACHINERY. The same in every cleanmarl script, byte for byte (tests/test_scripts.py keeps the
# copies equal); a reader of the algorithm can skip it. Flags and their ranges, the family-default
# lookup, seeding, env creation, checkpoints (tensors and plain values only), RNG state, signals,
# greedy evaluation, video and progress lines.
# ==================================================================================================
SCRIPT = os.path.basename(__file__)
# Flags a resumed run may change; every other flag it sets must match the checkpoint's run.
RUN_FLAGS = {"checkpoint", "eval_only", "eval_interval", "eval_episodes", "capture_video", "save_model",
             "total_timesteps", "track", "wandb_project_name", "wandb_entity", "threads", "cuda"}
DERIVED = ("batch_size", "minibatch_size", "num_iterations", "defaults_from")  # set by parse_args, never by hand


def fail(message):
    """A user error: one line on stderr and exit status 2, never a traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args(args_class, family_columns, family_defaults, flag_ranges):
    """The command line -> (args, the checkpoint to resume or evaluate or None, the run's name).
    Unset flags take the env family's row of family_defaults (a resumed run: its checkpoint's)."""
    args = tyro.cli(args_class)
    if args.eval_only and not args.checkpoint:
        fail("--eval-only needs --checkpoint PATH (a checkpoint this script wrote)")
    ckpt = load_checkpoint(args) if args.checkpoint else None
    if ckpt is None:
        args.defaults_from = apply_family_defaults(args, family_columns, family_defaults, flags_given(sys.argv[1:]))
    check_args(args, flag_ranges)
    args.batch_size = args.num_envs * args.num_steps
    if args.batch_size % args.num_minibatches:
        fail(f"--num-minibatches ({args.num_minibatches}) must divide num_envs*num_steps ({args.batch_size}): set one that does")
    args.minibatch_size = args.batch_size // args.num_minibatches
    args.num_iterations = args.total_timesteps // args.batch_size
    if args.num_iterations < 1:
        fail(f"--total-timesteps ({args.total_timesteps}) is less than one rollout ({args.batch_size} steps)")
    if ckpt and ckpt["iteration"] >= args.num_iterations and not args.eval_only:
        fail(f"--checkpoint {args.checkpoint} is a finished run ({ckpt['global_step']} steps): evaluate it with "
             "--eval-only, or train it further with a larger --total-timesteps")
    if args.capture_video and not (args.eval_interval or args.save_model or args.eval_only):
        fail("--capture-video records the greedy evaluations, and none is scheduled: add --eval-interval N or --save-model")
    if args.num_iterations * args.batch_size != args.total_timesteps and not args.eval_only:
        print(f"note: --total-timesteps {args.total_timesteps} is not a whole number of rollouts of {args.batch_size} "
              f"steps: the run takes {args.num_iterations * args.batch_size}", file=sys.stderr)
    # a resumed run writes on into its own folder, so its TensorBoard curves continue
    run_name = (os.path.basename(os.path.dirname(os.path.abspath(args.checkpoint))) if ckpt
                else f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}")
    if not args.eval_only:
        row = " ".join(f"{name}={getattr(args, name)}" for name in family_columns)
        print(f"run: runs/{run_name}\nhyperparameters ({args.defaults_from} for the flags not given): {row}", flush=True)
    return args, ckpt, run_name


def flags_given(argv):
    """The Args fields set on the command line: `--num-envs 8`, `--num-envs=8`, `--no-anneal-lr`."""
    names = {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}
    return names | {name[3:] for name in names if name.startswith("no_")}


def apply_family_defaults(args, family_columns, family_defaults, given):
    """Fill the flags the command line left unset from the env's row of family_defaults (looked up
    as family:scenario, then family, then "*"); returns the row's source ("Args": none applies)."""
    family, _, rest = args.env_id.partition(":")
    source, values = (family_defaults.get(f"{family}:{rest.split(',')[0]}") or family_defaults.get(family)
                      or family_defaults.get("*") or ("Args", ()))
    for name, value in zip(family_columns, values):
        if name not in given:
            setattr(args, name, value)
    return source


def check_args(args, flag_ranges):
    """Each numeric flag against its range in flag_ranges (NaN fails every range)."""
    for name, rule in flag_ranges.items():
        value = getattr(args, name)
        if value is None:  # an optional flag left unset
            continue
        op, bound = rule.split(" ", 1)
        if op == "in":  # "in [a, b]" (closed) or "in (a, b)" (open)
            low, high = (float(x) for x in bound[1:-1].split(","))
            ok = low <= value <= high if bound[0] == "[" else low < value < high
        else:
            ok = value >= float(bound) if op == ">=" else value > float(bound)
        if not ok:
            fail(f"--{name.replace('_', '-')} must be {rule}, got {value}")


def set_up(args):
    """Seed python, numpy and torch; set the threads; the device."""
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    if args.cuda and device.type == "cpu":
        print("warning: --cuda given but CUDA is not available; running on the CPU", file=sys.stderr)
    return device


def make_envs(args, device, action_type):
    """The training envs (one with --eval-only: it needs the spec), or a one-line error."""
    try:
        envs = make_env(args.env_id, 1 if args.eval_only else args.num_envs, args.seed, device, action_type=action_type)
    except EnvError as e:
        fail(str(e))
    if args.capture_video and not envs.can_render:
        fail(f"--capture-video: {args.env_id} cannot render videos (vmas:, mamujoco: and smax: can)")
    if args.capture_video and not all(importlib.util.find_spec(m) for m in ("imageio", "imageio_ffmpeg")):
        fail("--capture-video needs imageio and imageio-ffmpeg: pip install imageio==2.38.1 imageio-ffmpeg==0.6.0")
    return envs


def load_checkpoint(args):
    """Read --checkpoint with weights_only=True (tensors and plain values: nothing in the file can
    run) and take on its run's flags: a flag left at its default takes the checkpoint's value, and
    one set to another value must match it (outside RUN_FLAGS)."""
    try:
        ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # a pickled object other than tensors and plain values: never unpickled
        fail(f"--checkpoint {args.checkpoint} holds more than tensors and plain values, so it is not loaded (it could run "
             "code): a checkpoint from before cleanmarl's safe format, or not a cleanmarl checkpoint; train it again")
    except Exception as e:  # missing file, not a torch file, truncated
        fail(f"--checkpoint {args.checkpoint}: cannot read it ({type(e).__name__}: {str(e).splitlines()[0]})")
    if not isinstance(ckpt, dict) or "script" not in ckpt:  # another program's, or an old cleanmarl weights-only file
        fail(f"--checkpoint {args.checkpoint} is not a checkpoint this version of {SCRIPT} can resume or evaluate")
    if ckpt["script"] != SCRIPT:
        fail(f"--checkpoint {args.checkpoint} was written by {ckpt['script']}; run it with that script, not {SCRIPT}")
    defaults = vars(args.__class__())
    for name, saved in ckpt["args"].items():
        given = getattr(args, name, None)
        if name not in defaults or name in DERIVED[:3]:
            continue
        if given == defaults[name]:
            setattr(args, name, saved)
        elif given != saved and name not in RUN_FLAGS:
            fail(f"--checkpoint {args.checkpoint} is a run with --{name.replace('_', '-')} {saved}, not {given}: "
                 "leave the flag out to use the checkpoint's")
    return ckpt


def rng_state(generators):
    """The global RNG states and the script's own generators, as tensors and plain values."""
    np_state = np.random.get_state(legacy=False)
    return {"python": random.getstate(), "numpy_key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "numpy": {k: v for k, v in np_state.items() if k != "state"} | {"pos": np_state["state"]["pos"]},
            "torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "generators": {name: g.get_state() for name, g in generators.items()}}


def restore_rng(rng, generators):
    random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))
    np_extra = dict(rng["numpy"])
    np.random.set_state({"bit_generator": np_extra.pop("bit_generator"), "has_gauss": np_extra["has_gauss"],
                         "gauss": np_extra["gauss"], "state": {"key": rng["numpy_key"].numpy().astype(np.uint32),
                                                               "pos": np_extra["pos"]}})
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    for name, generator in generators.items():
        generator.set_state(rng["generators"][name])


def evaluate(greedy, env_id, episodes, seed, device, action_type, video_path=None):
    """Greedy evaluation: team return (and win) of the first episode of each of `episodes` envs, and
    env 0's states along that episode [L, state_dim]; with video_path, env 0's episode is recorded
    there. Same seed as training: for seeded games (matrix, diff) the seed picks the game itself.
    greedy(step, memory) -> (actions, memory): memory is None at the start (a recurrent policy's state)."""
    env = make_env(env_id, episodes, seed, device, action_type=action_type)
    step = env.reset()
    frames = [env.render()] if video_path else []
    returns = torch.full((episodes,), float("nan"), device=device)
    wins = torch.zeros(episodes, device=device)
    states, memory = [], None
    with torch.no_grad():
        while returns.isnan().any():
            if returns[0].isnan():
                states.append(step.state[0])
            actions, memory = greedy(step, memory)
            step = env.step(actions)
            first = step.episodes.done & returns.isnan()
            if video_path and returns[0].isnan() and not first[0]:
                frames.append(env.render())
            returns = torch.where(first, step.episodes.ret, returns)
            if step.episodes.win is not None:
                wins = torch.where(first, step.episodes.win.float(), wins)
    env.close()
    if video_path:
        write_video(video_path, frames)
    return returns, wins if env.spec.has_win else None, torch.stack(states)


def write_video(path, frames, fps=10):
    import imageio.v2 as imageio  # with imageio-ffmpeg (requirements.txt): an mp4 without a system ffmpeg

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with warnings.catch_warnings():  # JAX (SMAX) warns at any fork, here ffmpeg's fork-and-exec
        warnings.filterwarnings("ignore", message="os.fork")
        with imageio.get_writer(path, fps=fps, macro_block_size=1) as video:
            for frame in frames:
                video.append_data(frame)
    print(f"video saved to {path}")


class Stopwatch:
    """Where an iteration's time goes: `lap(tag)` adds the milliseconds since the previous lap to
    `ms[tag]` (on a GPU, once the queued work is done: the host runs ahead)."""

    def __init__(self, device):
        self.device, self.ms = device, {}
        self.last = self.now()

    def now(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self, tag):
        now = self.now()
        self.ms[tag] = self.ms.get(tag, 0.0) + 1000 * (now - self.last)
        self.last = now


class Run:
    """A run's life around the training loop: the writer, a snapshot after every iteration (saved
    with --save-model at the end, and always on Ctrl-C, SIGTERM or a crash), greedy evaluations,
    progress lines. greedy(step, memory) -> (the greedy actions, memory) (see `evaluate`); summarize(states) -> extra eval.json fields
    from env 0's states along its evaluation episode."""

    def __init__(self, args, run_name, ckpt, envs, models, optimizers, generators, action_type, greedy, summarize=None):
        self.args, self.name, self.envs = args, run_name, envs
        self.device = next(p for m in models.values() for p in m.parameters()).device
        self.models, self.optimizers, self.generators = models, optimizers, generators
        self.action_type, self.greedy, self.summarize = action_type, greedy, summarize
        self.path = f"runs/{run_name}/{args.exp_name}.cleanmarl_model"
        self.ckpt = ckpt
        if ckpt:
            try:
                for name, module in models.items():
                    module.load_state_dict(ckpt["models"][name])
                for name, optimizer in optimizers.items():
                    optimizer.load_state_dict(ckpt["optimizers"][name])
            except (KeyError, RuntimeError, ValueError) as e:
                fail(f"--checkpoint does not fit this run's networks ({str(e).splitlines()[0]})")
        if args.eval_only:
            envs.close()
            summary = self.evaluate(ckpt["global_step"])
            with open(os.path.join(os.path.dirname(args.checkpoint), "eval.json"), "w") as f:
                json.dump(summary, f)
            print("greedy evaluation: " + json.dumps({k: v for k, v in summary.items() if k != "influence"}))
            sys.exit(0)
        if args.track:
            try:
                import wandb
            except ImportError:
                fail("--track needs Weights and Biases: pip install wandb")
            wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                       config=vars(args), name=run_name, save_code=True)
        self.writer = SummaryWriter(f"runs/{run_name}")
        self.writer.add_text("hyperparameters",
                             "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))

    def resume(self):
        """After envs.reset(): the checkpoint's position (global_step, iterations done) and its RNG
        streams, or (0, 0)."""
        position = (self.ckpt["global_step"], self.ckpt["iteration"]) if self.ckpt else (0, 0)
        if self.ckpt:
            restore_rng(self.ckpt["rng"], self.generators)
        self.last_whole = self.snapshot(*position)  # what an interrupt saves
        self.start_step, self.start_time, self.last_print = position[0], time.time(), 0.0
        return position

    def snapshot(self, global_step, iteration):
        """Everything a run needs to go on exactly, copied: weights, optimizers, value normalizer,
        the position and the RNG states. Taken after every iteration, so that an interrupt saves
        the last whole iteration and the resumed run repeats the same steps."""
        return copy.deepcopy({"script": SCRIPT, "args": vars(self.args), "iteration": iteration, "global_step": global_step,
                              "models": {k: m.state_dict() for k, m in self.models.items()},
                              "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                              "rng": rng_state(self.generators)})

    def evaluate(self, global_step):
        """Evaluate the current policy greedily (and record a video); the eval.json summary."""
        args = self.args
        video = f"videos/{self.name}/eval_{global_step}.mp4" if args.capture_video else None
        training_rng = rng_state(self.generators)  # envs such as VMAS seed the global RNGs: training's streams must not move
        returns, wins, states = evaluate(self.greedy, args.env_id, args.eval_episodes, args.seed, self.device,
                                         self.action_type, video)
        summary = {"eval_return_mean": returns.mean().item(), "eval_episodes": args.eval_episodes,
                   "global_step": global_step, "optimal_return": self.envs.spec.optimal_return}
        if wins is not None:
            summary["eval_win_rate"] = wins.mean().item()
        if self.summarize:
            with torch.no_grad():
                summary.update(self.summarize(states))
        restore_rng(training_rng, self.generators)
        if video and args.track:
            import wandb
            wandb.log({"videos": wandb.Video(video)})
        return summary

    def log_evaluation(self, summary):
        self.writer.add_scalar("eval/episodic_return", summary["eval_return_mean"], summary["global_step"])
        if "eval_win_rate" in summary:
            self.writer.add_scalar("eval/win_rate", summary["eval_win_rate"], summary["global_step"])

    def end_iteration(self, iteration, global_step, watch, mean_return):
        """After an iteration's update: the snapshot, the stage timings and SPS, a scheduled greedy
        evaluation, and a progress line every 2 s. Returns the SPS."""
        args = self.args
        watch.lap("time/logging_ms")
        self.last_whole = self.snapshot(global_step, iteration)
        watch.lap("time/snapshot_ms")
        for tag, ms in watch.ms.items():
            self.writer.add_scalar(tag, ms, global_step)
        self.writer.add_scalar("time/iteration_ms", sum(watch.ms.values()), global_step)
        sps = int((global_step - self.start_step) / (time.time() - self.start_time))
        self.writer.add_scalar("charts/SPS", sps, global_step)
        if args.eval_interval and global_step // args.eval_interval > (global_step - args.batch_size) // args.eval_interval:
            self.log_evaluation(self.evaluate(global_step))
        now = time.time()
        if now - self.last_print > 2.0 or iteration == args.num_iterations:
            self.last_print = now
            ret = f"{mean_return:.3f}" if mean_return == mean_return else "- (no episode has ended yet)"
            print(f"iter {iteration}/{args.num_iterations} step {global_step}/{args.num_iterations * args.batch_size} "
                  f"episodic_return={ret} SPS={sps}", flush=True)

    def __enter__(self):
        self.handlers = signal.getsignal(signal.SIGINT), signal.signal(signal.SIGTERM, self.on_signal)
        return self

    @staticmethod
    def on_signal(signum, frame):  # SIGTERM (a cluster's time limit or preemption) ends the run as Ctrl-C does
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def __exit__(self, kind, error, traceback):
        args = self.args
        interrupted = kind is not None and issubclass(kind, KeyboardInterrupt)
        exit_code = 0 if kind is None else (143 if str(error) == "SIGTERM" else 130) if interrupted else 1
        if interrupted:  # Ctrl-C or SIGTERM: keep what the run made, exit 130 / 143
            print(f"interrupted ({str(error) or 'SIGINT'}): flushing logs and saving the model as of its last whole "
                  f"iteration; resume with --checkpoint {self.path}", file=sys.stderr)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second signal must not cut the checkpoint short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if args.save_model or exit_code:  # a crash too: save what there is, then the traceback
            torch.save(self.last_whole, self.path + ".tmp")  # through a temporary file: a kill keeps the old one whole
            os.replace(self.path + ".tmp", self.path)
            print(f"model saved to {self.path}")
        signal.signal(signal.SIGINT, self.handlers[0])
        signal.signal(signal.SIGTERM, self.handlers[1])
        self.envs.close()
        self.writer.flush()
        if exit_code == 1:
            return False
        if args.save_model and not exit_code:
            summary = self.evaluate(self.last_whole["global_step"])
            self.log_evaluation(summary)
            with open(f"runs/{self.name}/eval.json", "w") as f:
                json.dump(summary, f)
            print("greedy evaluation: " + json.dumps({k: v for k, v in summary.items() if k != "influence"}))
        self.writer.close()
        if args.track:
            import wandb
            wandb.finish()
        if exit_code:
            sys.exit(exit_code)


if __name__ == "__main__":
    main()
