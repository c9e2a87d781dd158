"""PyBullet backend: one DIRECT physics client holding N drone bodies; integrates the wrenches it is given.

Bullet integrates at the physics rate through its own substeps (``numSubSteps``) inside one
``stepSimulation`` call per control period; the external wrench stays applied across those substeps,
which we verified gives the identical trajectory to one Python call per substep at a third of the cost.
Bodies are built once from primitive shapes; a reset only moves them (reloading a URDF costs ~16 ms).

A world of independent drones (``drones_collide=False``, the vector env's) filters drone-drone contacts and
gives each drone its own frame: frame i's origin sits ``spacing`` metres from its neighbours' on a square grid in
x, y, and positions in and out of the world are in the drone's frame. Without the grid, drones flying near one
another cost Bullet's broadphase a test per pair every substep (measured: 3x slower steps at N = 64, all near one
target); with it, a drone's world x, y carry the grid's offset, so they round at the offset's precision (2e-15 m at
8 m, 3e-14 m at 128 m): a drone then agrees with a one-drone world within ~2e-13 m over a 12 s episode, no longer to
the bit (drone 0's frame is the world's: it agrees to the bit).

Compiled by Cython in pure-Python mode (see ``physics``): ``step`` and ``read`` run every control period, and
as C they add almost nothing to the pybullet calls they make.
"""

from __future__ import annotations

import cython
import numpy as np
import pybullet as p

from entropilot.vehicle.airframe import GRAVITY, Airframe

_DRONE_COLORS = [
    (0.15, 0.35, 0.85, 1),
    (0.85, 0.3, 0.15, 1),
    (0.2, 0.7, 0.3, 1),
    (0.7, 0.2, 0.7, 1),
    (0.9, 0.75, 0.1, 1),
]
_ORIGIN, _LINK_FRAME = (0.0, 0.0, 0.0), p.LINK_FRAME
# Bound once: looked up on the module at every call they would cost more than some of the calls themselves.
_apply_force, _apply_torque, _step_simulation = p.applyExternalForce, p.applyExternalTorque, p.stepSimulation
_pose, _twist = p.getBasePositionAndOrientation, p.getBaseVelocity
# Collision groups of a world whose drones fly through one another (``drones_collide=False``): each drone touches
# the ground only. Bullet pairs two objects only where each one's group is in the other's mask.
_DRONE_GROUP, _GROUND_GROUP = 1, 2


def grid_offsets(num_drones: int, spacing: float) -> list[tuple[float, float]]:
    """The (x, y) origins of ``num_drones`` frames on a square grid ``spacing`` apart, the first at (0, 0)."""
    columns = max(1, int(np.ceil(np.sqrt(num_drones))))
    return [(float(i % columns * spacing), float(i // columns * spacing)) for i in range(num_drones)]


@cython.cclass
class PyBulletWorld:
    num_drones = cython.declare(cython.Py_ssize_t, visibility="readonly")
    client = cython.declare(object, visibility="readonly")  # the physics client id; None once closed
    ground = cython.declare(object, visibility="readonly")
    bodies = cython.declare(list, visibility="readonly")
    offsets = cython.declare(list, visibility="readonly")  # per drone: (x, y) of its frame's origin in the world
    _offset = cython.declare(cython.bint)  # some frame is not the world's
    _offset_xy = cython.declare(cython.double[:, :])  # offsets, as C doubles

    def __init__(
        self,
        airframe: Airframe,
        num_drones: int,
        physics_hz: int,
        control_hz: int,
        drones_collide: bool = True,
        spacing: float = 0.0,
    ):
        self.num_drones = num_drones
        self.offsets = grid_offsets(num_drones, spacing)
        self._offset = spacing != 0 and num_drones > 1
        self._offset_xy = np.array(self.offsets, dtype=np.float64).reshape(num_drones, 2)
        self.client = p.connect(p.DIRECT)
        c = self.client
        p.setGravity(0, 0, -GRAVITY, physicsClientId=c)
        p.setPhysicsEngineParameter(
            fixedTimeStep=1.0 / control_hz, numSubSteps=physics_hz // control_hz, physicsClientId=c
        )
        ground_shape = p.createCollisionShape(p.GEOM_PLANE, physicsClientId=c)
        ground_visual = p.createVisualShape(
            p.GEOM_BOX, halfExtents=[5, 5, 0.001], rgbaColor=[0.85, 0.87, 0.9, 1], physicsClientId=c
        )
        self.ground = p.createMultiBody(0, ground_shape, ground_visual, physicsClientId=c)
        half = airframe.collision_half_extents
        collision = p.createCollisionShape(p.GEOM_BOX, halfExtents=half, physicsClientId=c)
        self.bodies = []
        for i in range(num_drones):
            visual = self._visual_shape(airframe, _DRONE_COLORS[i % len(_DRONE_COLORS)])
            x, y = self.offsets[i]
            start = [x, y, 1.0 if self._offset else 1.0 + i]
            body = p.createMultiBody(airframe.mass, collision, visual, basePosition=start, physicsClientId=c)
            p.changeDynamics(body, -1, linearDamping=0.0, angularDamping=0.0, physicsClientId=c)
            self.bodies.append(body)
            if not drones_collide:
                p.setCollisionFilterGroupMask(body, -1, _DRONE_GROUP, _GROUND_GROUP, physicsClientId=c)
        if not drones_collide:
            p.setCollisionFilterGroupMask(self.ground, -1, _GROUND_GROUP, _DRONE_GROUP, physicsClientId=c)
        self.set_inertial([airframe] * num_drones)

    def _visual_shape(self, airframe: Airframe, color) -> int:
        """An X of two arms and four rotor discs: cheap to build, readable in a video."""
        c = self.client
        arm = airframe.arm
        d = arm / np.sqrt(2)
        shapes = [p.GEOM_BOX, p.GEOM_BOX] + [p.GEOM_CYLINDER] * 4
        half_extents = [[arm, 0.004, 0.003]] * 2 + [[0, 0, 0]] * 4
        radii = [0, 0] + [0.023] * 4
        lengths = [0, 0] + [0.004] * 4
        positions = [[0, 0, 0], [0, 0, 0], [d, -d, 0.006], [-d, -d, 0.006], [-d, d, 0.006], [d, d, 0.006]]
        q45 = p.getQuaternionFromEuler([0, 0, np.pi / 4])
        q135 = p.getQuaternionFromEuler([0, 0, -np.pi / 4])
        orientations = [q45, q135] + [[0, 0, 0, 1]] * 4
        colors = [color, color] + [[0.1, 0.1, 0.1, 1]] * 4
        return p.createVisualShapeArray(
            shapeTypes=shapes,
            halfExtents=half_extents,
            radii=radii,
            lengths=lengths,
            rgbaColors=colors,
            visualFramePositions=positions,
            visualFrameOrientations=orientations,
            physicsClientId=c,
        )

    def set_inertial(self, airframes: list[Airframe]) -> None:
        for i, airframe in enumerate(airframes):
            self.set_drone_inertial(i, airframe)

    def set_drone_inertial(self, i: int, airframe: Airframe) -> None:
        body, inertia = self.bodies[i], list(airframe.inertia)
        p.changeDynamics(body, -1, mass=airframe.mass, localInertiaDiagonal=inertia, physicsClientId=self.client)

    def place(self, i: int, position, quaternion, velocity, angular_velocity_world) -> None:
        """Drone ``i`` to ``position`` (its frame), ``quaternion`` (x, y, z, w), world velocity and angular velocity."""
        body, c, (x, y) = self.bodies[i], self.client, self.offsets[i]
        position = [position[0] + x, position[1] + y, position[2]] if self._offset else list(position)
        p.resetBasePositionAndOrientation(body, position, list(quaternion), c)
        p.resetBaseVelocity(body, list(velocity), list(angular_velocity_world), c)

    @cython.ccall
    def step(self, body_forces: list, body_torques: list) -> list:
        """Apply each drone's body-frame force and torque for one control period, integrate it, and ``read``.
        A drone whose force is None gets no wrench (it falls freely)."""
        # Positional arguments: pybullet parses keywords noticeably slower, and these run every step.
        c = self.client
        i: cython.Py_ssize_t
        for i in range(len(self.bodies)):
            force = body_forces[i]
            if force is None:
                continue
            body = self.bodies[i]
            _apply_force(body, -1, force, _ORIGIN, _LINK_FRAME, c)
            _apply_torque(body, -1, body_torques[i], _LINK_FRAME, c)
        _step_simulation(c)
        return self.read()

    @cython.ccall
    def read(self) -> list:
        """Per body: (position in its frame, quaternion (x, y, z, w), world velocity, world angular velocity), each
        a tuple."""
        if not self._offset:
            c = self.client
            return [_pose(body, c) + _twist(body, c) for body in self.bodies]
        return [self.read_drone(i) for i in range(self.num_drones)]

    @cython.ccall
    @cython.boundscheck(False)
    @cython.wraparound(False)
    def read_drone(self, i: cython.Py_ssize_t) -> tuple:
        """``read`` of body ``i`` alone."""
        body, c = self.bodies[i], self.client
        position, quaternion = _pose(body, c)
        velocity, angular_velocity = _twist(body, c)
        if self._offset:  # exact: a world x within a factor 2 of the grid's power-of-two offset, or the offset 0
            x: cython.double = position[0]
            y: cython.double = position[1]
            position = (x - self._offset_xy[i, 0], y - self._offset_xy[i, 1], position[2])
        return position, quaternion, velocity, angular_velocity

    def render(self, target, width: int = 320, height: int = 240, distance: float = 0.5, drone: int = 0) -> np.ndarray:
        """An RGB frame from a chase camera looking at ``target`` in drone ``drone``'s frame; TinyRenderer works
        without a display."""
        c, (x, y) = self.client, self.offsets[drone]
        view = p.computeViewMatrixFromYawPitchRoll(
            cameraTargetPosition=[target[0] + x, target[1] + y, target[2]],
            distance=distance,
            yaw=35,
            pitch=-25,
            roll=0,
            upAxisIndex=2,
            physicsClientId=c,
        )
        proj = p.computeProjectionMatrixFOV(fov=60, aspect=width / height, nearVal=0.02, farVal=30, physicsClientId=c)
        _, _, rgba, _, _ = p.getCameraImage(width, height, view, proj, renderer=p.ER_TINY_RENDERER, physicsClientId=c)
        return np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[:, :, :3]

    def close(self) -> None:
        if self.client is not None and p.isConnected(self.client):
            p.disconnect(self.client)
        self.client = None
