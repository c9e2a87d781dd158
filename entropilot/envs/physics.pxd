# C-level signatures of physics.py's per-drone entry points, so the compiled simulator calls them as C functions.
cpdef drone_state(position, quaternion, velocity, angular_velocity, action)
cpdef tuple drone_control(physics, action, drone, air_velocity, double downwash)
