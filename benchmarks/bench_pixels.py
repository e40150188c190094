"""MAIRL from pixels against MAIRL from states on Pendulum-v1: wall time per 1,000 environment steps, and the pixel
renderers' frames per second.

Both trainers are built in this process with the same configuration (the defaults of ``MAIRLConfig`` but
``obs``; ``--pretrain`` and ``--warmup`` shorten the one-time start), warmed up, then timed over at least
``--steps`` environment steps of training iterations (policy segment, model block, discriminator block), so the
figure is the steady-state cost a long run pays; the warm-up's time is printed apart. The renderers are timed
drawing one frame at a time from random states, and the wrapped environments stepping with random actions.

    python benchmarks/bench_pixels.py [--steps 1000] [--warmup 1000] [--pretrain 500] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from mbirl.algorithms.mairl import MAIRLConfig, build_mairl
from mbirl.envs.pixels import PIXEL_RENDERERS, make_pixel_env
from mbirl.experts.demos import demo_stats
from mbirl.nets import DEFAULT_DEVICE, DEVICES, resolve_device


def renderer_fps(env_id: str, frames: int, seed: int) -> dict[str, float]:
    """Frames per second of the renderer alone (one frame per call) and of the wrapped environment's steps."""
    env = make_pixel_env(env_id, frame_stack=3)
    space = env.observation_space
    rng = np.random.default_rng(seed)
    env.action_space.seed(seed)
    _, info = env.reset(seed=seed)
    states = []
    t0 = time.perf_counter()
    for _ in range(frames):
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        states.append(np.asarray(info["state"], np.float32))
        if terminated or truncated:
            _, info = env.reset(seed=int(rng.integers(1 << 30)))
    steps_per_s = frames / (time.perf_counter() - t0)
    env.close()
    renderer = PIXEL_RENDERERS.make(env_id)
    t0 = time.perf_counter()
    for s in states:
        renderer.render(s)
    fps = frames / (time.perf_counter() - t0)
    renderer.close()
    assert space.shape == (9, 64, 64)
    return {"renderer_frames_per_s": round(fps, 1), "wrapped_env_steps_per_s": round(steps_per_s, 1)}


def train_speed(obs: str, steps: int, warmup: int, pretrain: int, seed: int, device: torch.device
                ) -> dict[str, float]:
    """Seconds of the warm-up (with model pre-training) and seconds per 1,000 env steps of training after it."""
    demos = demo_stats("data/demos/Pendulum-v1.npz")
    t0 = time.perf_counter()
    trainer = build_mairl(MAIRLConfig(obs=obs, warmup_steps=warmup, model_pretrain_steps=pretrain), demos,
                          seed=seed, device=device)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainer.warmup()
    warm = time.perf_counter() - t0
    start = trainer.env_steps
    t0 = time.perf_counter()
    while trainer.env_steps - start < steps:
        trainer.iteration_step()
    seconds = time.perf_counter() - t0
    out = {"build_s": round(build, 2), "warmup_s": round(warm, 2), "timed_env_steps": trainer.env_steps - start,
           "s_per_1k_env_steps": round(1000 * seconds / (trainer.env_steps - start), 2)}
    if obs == "pixels":
        out["replay_frames_held"] = trainer.buffer.held_frames()
        out["replay_transitions"] = len(trainer.buffer)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="env steps timed after the warm-up, per mode")
    parser.add_argument("--warmup", type=int, default=MAIRLConfig.warmup_steps, help="random warm-up env steps")
    parser.add_argument("--pretrain", type=int, default=MAIRLConfig.model_pretrain_steps,
                        help="model pre-training updates after the warm-up")
    parser.add_argument("--frames", type=int, default=500, help="frames per renderer timing")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=DEFAULT_DEVICE, choices=DEVICES, help="where the networks train")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    result: dict[str, object] = {"torch_threads": args.threads, "device": str(device)}
    for env_id in PIXEL_RENDERERS.names:
        result[env_id] = renderer_fps(env_id, args.frames, args.seed)
        print(env_id, json.dumps(result[env_id]), flush=True)
    for obs in ("state", "pixels"):
        result[obs] = train_speed(obs, args.steps, args.warmup, args.pretrain, args.seed, device)
        print(f"Pendulum-v1 MAIRL from {obs}:", json.dumps(result[obs]), flush=True)
    state, pixels = result["state"], result["pixels"]
    assert isinstance(state, dict) and isinstance(pixels, dict)
    ratio = pixels["s_per_1k_env_steps"] / state["s_per_1k_env_steps"]
    print(f"seconds per 1k env steps: state {state['s_per_1k_env_steps']}, pixels {pixels['s_per_1k_env_steps']} "
          f"({ratio:.1f}x)")


if __name__ == "__main__":
    main()
