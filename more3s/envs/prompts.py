"""Action prompts and state captions: the text side of MORE-3S's shared semantic space.

Three prompt sets per task (the paper's prompt ablation):
  ``original``   short imperative descriptions of the action,
  ``synonym``    the same actions in other words,
  ``contextual`` questions / richer context that say *why* one would take the action.
Discrete tasks have one prompt per action (in the env's action order); MuJoCo tasks have one
prompt per action dimension describing the joint it drives, plus a base prompt ``e_0``
(E_a(a) = e_0 + sum_i a_i e_i).
"""

from __future__ import annotations

from typing import Literal, get_args

from .tasks import TaskSpec, get_task

__all__ = ["PromptSet", "PROMPT_SETS", "check_prompt_set", "action_prompts", "base_action_prompt", "state_caption"]

PromptSet = Literal["original", "synonym", "contextual"]  # the one definition of the prompt sets
PROMPT_SETS: tuple[PromptSet, ...] = get_args(PromptSet)

# --- Atari: per-game wording for each ALE action meaning -------------------------------------
# (original, synonym, contextual)
_BREAKOUT = {
    "NOOP": ("keep the paddle still", "leave the bat where it is",
             "should the paddle wait here because the ball is already coming toward it?"),
    "FIRE": ("launch the ball at the bricks", "serve a new ball upward",
             "is there no ball in play, so the paddle must serve one toward the wall of bricks?"),
    "RIGHT": ("move the paddle right", "slide the bat to the right",
              "will the ball land to the right of the paddle, so it should shift right to catch it?"),
    "LEFT": ("move the paddle left", "slide the bat to the left",
             "will the ball land to the left of the paddle, so it should shift left to catch it?"),
}
_PONG = {
    "NOOP": ("hold the paddle in place", "keep the bat still",
             "is the paddle already level with the ball, so it should stay where it is?"),
    "FIRE": ("serve the ball", "hit the ball to start the rally",
             "is the ball waiting to be served toward the opponent's side?"),
    "RIGHT": ("move the paddle up", "raise the bat",
              "is the ball heading above the paddle, so it must rise to return it?"),
    "LEFT": ("move the paddle down", "lower the bat",
             "is the ball heading below the paddle, so it must drop to return it?"),
    "RIGHTFIRE": ("move the paddle up and hit", "raise the bat and strike",
                  "should the paddle rise quickly and strike the ball back past the opponent?"),
    "LEFTFIRE": ("move the paddle down and hit", "lower the bat and strike",
                 "should the paddle drop quickly and strike the ball back past the opponent?"),
}
_QBERT = {
    "NOOP": ("stay on the current cube", "wait on this block",
             "is it safer for qbert to pause here until the falling ball passes?"),
    "FIRE": ("stand still on the pyramid", "hold position on the cube",
             "should qbert keep still and watch the enemies before jumping?"),
    "UP": ("hop up and to the right", "jump to the upper right cube",
           "is the unvisited cube up and to the right the best next square to color?"),
    "RIGHT": ("hop down and to the right", "jump to the lower right cube",
              "is the cube down and to the right still the wrong color and free of enemies?"),
    "LEFT": ("hop up and to the left", "jump to the upper left cube",
             "would jumping up and to the left escape coily and reach an uncolored cube?"),
    "DOWN": ("hop down and to the left", "jump to the lower left cube",
             "is the cube down and to the left the next one that needs a color change?"),
}
_SEAQUEST_MOVE = {
    "UP": ("swim up", "rise toward the surface", "does the submarine need air, so it should rise to the surface"),
    "DOWN": ("dive down", "sink deeper", "are the divers and enemies deeper, so the submarine should dive"),
    "LEFT": ("steer left", "head to the left", "is the target on the left side of the screen"),
    "RIGHT": ("steer right", "head to the right", "is the target on the right side of the screen"),
}


def _seaquest() -> dict[str, tuple[str, str, str]]:
    """Seaquest's 18 actions composed from movement and torpedo phrases, in each set's voice."""
    table = {
        "NOOP": ("keep the submarine still", "let the sub drift in place",
                 "is the submarine in a safe spot where it should simply wait?"),
        "FIRE": ("fire a torpedo", "shoot straight ahead",
                 "is an enemy shark or submarine right in front, so a torpedo should be fired?"),
    }
    for fire in (False, True):
        for d in ("UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT"):
            parts = [p for p in ("UP", "DOWN", "LEFT", "RIGHT") if p in d]
            words = [_SEAQUEST_MOVE[p] for p in parts]
            orig = " and ".join(w[0] for w in words)
            syn = " while ".join(w[1] for w in words) if len(words) > 1 else words[0][1]
            ctx = " and ".join(w[2] for w in words)
            if fire:
                orig, syn = orig + " while firing", syn + " and shoot a torpedo"
                ctx = ctx + ", with an enemy in the line of fire?"
            else:
                ctx = ctx + "?"
            table[d + ("FIRE" if fire else "")] = (orig, syn, ctx)
    return table


_ATARI_PROMPTS: dict[str, dict[str, tuple[str, str, str]]] = {"breakout": _BREAKOUT, "pong": _PONG, "qbert": _QBERT, "seaquest": _seaquest()}

# --- MuJoCo: one prompt per actuated joint ----------------------------------------------------
# (original, synonym, contextual) per joint; e_0 is the base prompt.
_MUJOCO_PROMPTS: dict[str, dict[str, tuple[str, str, str]]] = {
    "halfcheetah": {
        "_base": ("the cheetah applies torques to its legs", "the cheetah drives its joints",
                  "how should the cheetah push its legs to run forward fast?"),
        "bthigh": ("torque on the back thigh joint", "force at the rear hip",
                   "should the back thigh swing to push the body forward?"),
        "bshin": ("torque on the back shin joint", "force at the rear knee",
                  "should the back shin bend to keep the rear leg springy?"),
        "bfoot": ("torque on the back foot joint", "force at the rear ankle",
                  "should the back foot push off the ground?"),
        "fthigh": ("torque on the front thigh joint", "force at the front hip",
                   "should the front thigh reach forward for the next stride?"),
        "fshin": ("torque on the front shin joint", "force at the front knee",
                  "should the front shin fold to land the stride softly?"),
        "ffoot": ("torque on the front foot joint", "force at the front ankle",
                  "should the front foot paw the ground to keep balance?"),
    },
    "hopper": {
        "_base": ("the hopper applies torques to its leg", "the one legged robot drives its joints",
                  "how should the hopper move its leg to hop forward without falling?"),
        "thigh": ("torque on the thigh joint", "force at the hip",
                  "should the thigh swing to move the torso forward?"),
        "leg": ("torque on the leg joint", "force at the knee",
                "should the knee extend to launch the next hop?"),
        "foot": ("torque on the foot joint", "force at the ankle",
                 "should the foot push off to keep the hopper upright?"),
    },
    "walker2d": {
        "_base": ("the walker applies torques to both legs", "the biped drives its joints",
                  "how should the walker move its legs to walk forward upright?"),
        "thigh": ("torque on the right thigh joint", "force at the right hip",
                  "should the right thigh swing forward for the next step?"),
        "leg": ("torque on the right leg joint", "force at the right knee",
                "should the right knee bend or straighten to carry the weight?"),
        "foot": ("torque on the right foot joint", "force at the right ankle",
                 "should the right foot push off the ground?"),
        "thigh_left": ("torque on the left thigh joint", "force at the left hip",
                       "should the left thigh swing forward for the next step?"),
        "leg_left": ("torque on the left leg joint", "force at the left knee",
                     "should the left knee bend or straighten to carry the weight?"),
        "foot_left": ("torque on the left foot joint", "force at the left ankle",
                      "should the left foot push off the ground?"),
    },
}

_CAPTIONS = {
    "breakout": "a paddle at the bottom bounces a ball into rows of colored bricks",
    "pong": "two paddles hit a ball back and forth across a table",
    "qbert": "qbert hops on the cubes of a pyramid to change their color while avoiding enemies",
    "seaquest": "a submarine under the sea shoots sharks and enemy subs and rescues divers",
    "halfcheetah": "a two legged cheetah robot running on flat ground",
    "hopper": "a one legged hopping robot trying to move forward",
    "walker2d": "a two legged walking robot trying to move forward",
}


def check_prompt_set(prompt_set: str) -> PromptSet:
    """``prompt_set`` as a ``PromptSet``; ValueError naming the choices for any other string."""
    for known in PROMPT_SETS:
        if prompt_set == known:
            return known
    raise ValueError(f"unknown prompt set {prompt_set!r}; choose one of {PROMPT_SETS}")


def _index(prompt_set: str) -> int:
    return PROMPT_SETS.index(check_prompt_set(prompt_set))


def action_prompts(task: str | TaskSpec, prompt_set: str = "original") -> list[str]:
    """One prompt per discrete action, or per continuous action dimension, in env order."""
    spec, i = get_task(task), _index(prompt_set)
    table = _ATARI_PROMPTS.get(spec.name) or _MUJOCO_PROMPTS[spec.name]
    return [table[name][i] for name in spec.action_names]


def base_action_prompt(task: str | TaskSpec, prompt_set: str = "original") -> str:
    """The base prompt e_0 of a continuous-action task."""
    spec, i = get_task(task), _index(prompt_set)
    if spec.action_kind != "continuous":
        raise ValueError(f"task {spec.name!r} has discrete actions; it has no base action prompt")
    return _MUJOCO_PROMPTS[spec.name]["_base"][i]


def state_caption(task: str | TaskSpec) -> str:
    """The fixed per-game caption fed to LXMERT's language stream with every state."""
    return _CAPTIONS[get_task(task).name]
