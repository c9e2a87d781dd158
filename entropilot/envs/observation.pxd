# C-level signatures of observation.py's writers, so the compiled task code (tasks.py) calls them as C functions.
cpdef void write_observation(float[:] out, drone, target)
cpdef void write_noisy_observation(float[:] out, drone, target, noise, z)
cpdef void to_heading_frame(float[:] out)
