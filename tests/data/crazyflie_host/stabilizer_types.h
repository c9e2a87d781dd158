/* A stand-in for the Crazyflie firmware's src/modules/interface/stabilizer_types.h (bitcraze/crazyflie-firmware,
 * checked at commit 2a18fc2): the types entropilot's app reads and writes, with the firmware's field names, order
 * and units, so the app compiles on the host for its tests. Axis3f is src/hal/interface/imu_types.h's. */
#ifndef __STABILIZER_TYPES_H__
#define __STABILIZER_TYPES_H__

#include <stdbool.h>
#include <stdint.h>

typedef union {
  struct {
    float x;
    float y;
    float z;
  };
  float axis[3];
} Axis3f;

typedef struct attitude_s {
  uint32_t timestamp;
  float roll;
  float pitch;
  float yaw;
} attitude_t;

struct vec3_s {
  uint32_t timestamp;
  float x;
  float y;
  float z;
};
typedef struct vec3_s point_t;
typedef struct vec3_s velocity_t;
typedef struct vec3_s acc_t;
typedef struct vec3_s jerk_t;

typedef struct quaternion_s {
  union {
    struct {
      float q0;
      float q1;
      float q2;
      float q3;
    };
    struct {
      float x;
      float y;
      float z;
      float w;
    };
  };
} quaternion_t;

typedef struct baro_s {
  float pressure;
  float temperature;
  float asl;
} baro_t;

typedef struct sensorData_s {
  Axis3f acc;  /* Gs */
  Axis3f gyro; /* deg/s */
  Axis3f mag;  /* gauss */
  baro_t baro;
  uint64_t interruptTimestamp;
} sensorData_t;

typedef struct state_s {
  attitude_t attitude; /* deg (legacy CF2 body coordinate system, where pitch is inverted) */
  quaternion_t attitudeQuaternion;
  point_t position;    /* m */
  velocity_t velocity; /* m/s */
  acc_t acc;           /* Gs (but acc.z without considering gravity) */
} state_t;

#define STABILIZER_NR_OF_MOTORS 4

typedef enum control_mode_e {
  controlModeLegacy = 0,
  controlModeForceTorque = 1,
  controlModeForce = 2,
} control_mode_t;

typedef struct control_s {
  union {
    struct {
      int16_t roll;
      int16_t pitch;
      int16_t yaw;
      float thrust;
    };
    struct {
      float thrustSi;
      union {
        float torque[3];
        struct {
          float torqueX;
          float torqueY;
          float torqueZ;
        };
      };
    };
    float normalizedForces[STABILIZER_NR_OF_MOTORS]; /* 0.0 ... 1.0 */
  };
  control_mode_t controlMode;
} control_t;

typedef enum mode_e { modeDisable = 0, modeAbs, modeVelocity } stab_mode_t;

typedef struct {
  stab_mode_t x;
  stab_mode_t y;
  stab_mode_t z;
  stab_mode_t roll;
  stab_mode_t pitch;
  stab_mode_t yaw;
  stab_mode_t quat;
} setpoint_mode_t;

typedef struct setpoint_s {
  uint32_t timestamp;
  attitude_t attitude;     /* deg */
  attitude_t attitudeRate; /* deg/s */
  quaternion_t attitudeQuaternion;
  float thrust;
  point_t position;    /* m */
  velocity_t velocity; /* m/s */
  acc_t acceleration;  /* m/s^2 */
  jerk_t jerk;         /* m/s^3 */
  bool velocity_body;
  setpoint_mode_t mode;
} setpoint_t;

#endif
