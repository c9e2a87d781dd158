/* entropilot on the Crazyflie: the exported policy's observation built from the firmware's state estimate, the
 * policy run at its trained control rate, its action mapped to the stock rate controller's setpoint (ctbr) or to
 * motor forces (motors). Firmware-independent: it needs only the firmware's stabilizer_types.h and the generated
 * policy.h, so the host tests compile it against small stand-ins of that header.
 *
 * Conventions, from the firmware sources (crazyflie-firmware, src/...):
 *   state->position, state->velocity   world frame, z up, m and m/s          (modules/interface/stabilizer_types.h)
 *   state->attitudeQuaternion          body-to-world, w x y z, "not adjusted for the legacy coordinate system"
 *                                      (modules/src/kalman_core/kalman_core.c, kalmanCoreExternalizeState); its
 *                                      rotation matrix as kalmanCoreFinalize computes R
 *   state->attitude                    deg, pitch inverted ("legacy CF2 body coordinate system"): not used here
 *   sensors->gyro                      deg/s, body x forward / y left / z up   (stabilizer_types.h, sensorData_t)
 * which is the policy's frame (policy.h); only units change.
 */
#ifndef ENTROPILOT_APP_H
#define ENTROPILOT_APP_H

#include <stdbool.h>
#include <stdint.h>

#include "policy.h"
#include "stabilizer_types.h"

#if !defined(ENTROPILOT_OBS_POS_ERR) || !defined(ENTROPILOT_OBS_ROTATION) || !defined(ENTROPILOT_OBS_VELOCITY) || \
    !defined(ENTROPILOT_OBS_BODY_RATES) || !defined(ENTROPILOT_OBS_PREV_ACTION)
#error "policy.h lacks an observation group this app fills: regenerate it with `entropilot export --format c`"
#endif
#if ENTROPILOT_OBS_POS_ERR_SIZE != 3 || ENTROPILOT_OBS_ROTATION_SIZE != 9 || ENTROPILOT_OBS_VELOCITY_SIZE != 3 || \
    ENTROPILOT_OBS_BODY_RATES_SIZE != 3 || ENTROPILOT_OBS_PREV_ACTION_SIZE != ENTROPILOT_ACTION_SIZE || \
    ENTROPILOT_OBSERVATION_SIZE != 22
#error "policy.h's observation layout is not the one this app builds (22 floats: pos_err, rotation, velocity, rates, prev_action)"
#endif
#if !defined(ENTROPILOT_ACTION_MODE_CTBR) && !defined(ENTROPILOT_ACTION_MODE_MOTORS)
#error "policy.h names an action mode this app cannot fly (ctbr or motors)"
#endif
#ifdef __FAST_MATH__
#error "do not build with -ffast-math: it removes the finiteness checks that hand control back to the stock controller"
#endif

#define ENTROPILOT_TICK_HZ 1000 /* RATE_MAIN_LOOP: the stabilizer calls the controller once per tick */

/* The legacy thrust scale of setpoint_t.thrust (uint16 range) and the bounds the commander's RPYT decoder applies to
 * it (modules/src/crtp_commander_rpyt.c: MIN_THRUST, MAX_THRUST): what entropilot's ground-side Crazyflie link gets
 * when it streams the same action (entropilot/deploy/links/crazyflie.py). */
#define ENTROPILOT_THRUST_SCALE 65535.0f
#define ENTROPILOT_THRUST_MIN 1000.0f
#define ENTROPILOT_THRUST_MAX 60000.0f

typedef enum {
  entropilotStock = 0, /* the stock controller flies the commander's setpoint */
  entropilotRates,     /* the stock controller's rate loop flies app->rates (a ctbr policy) */
  entropilotMotors,    /* control holds the policy's motor forces (a motors policy) */
} entropilotDecision_t;

typedef struct {
  /* Parameters (param group "entropilot") */
  uint8_t enable;         /* 1: the policy flies whenever the commander asks for a position; a fault clears it */
  float maxPositionError; /* m; each position error the policy sees is clamped to +-this (0: no clamp) */

  /* State (log group "entropilot") */
  uint8_t engaged;    /* the policy has control this tick */
  uint32_t phase;     /* control-rate scheduler: the policy runs when it passes ENTROPILOT_TICK_HZ */
  uint32_t steps;     /* policy calls since it took control */
  uint32_t faults;    /* non-finite observations or actions met (each one handed control back) */
  float observation[ENTROPILOT_OBSERVATION_SIZE];
  float action[ENTROPILOT_ACTION_SIZE]; /* the latest action, held between policy steps; the next "previous" */
  setpoint_t rates;                     /* a ctbr action as the stock rate controller's setpoint */
} entropilotApp_t;

/* Parameters at their defaults, the policy disengaged. */
void entropilotAppInit(entropilotApp_t *app);

/* One stabilizer tick. The policy flies while app->enable is set and the commander's setpoint is an absolute
 * position (a high-level commander takeoff/go_to, or a position setpoint): that position is its target. Any other
 * setpoint (none, manual, the supervisor's null or level-out setpoint) goes to the stock controller unchanged, and so
 * does every tick after a non-finite value, until enable is set again. */
entropilotDecision_t entropilotAppStep(entropilotApp_t *app, control_t *control, const setpoint_t *setpoint,
                                       const sensorData_t *sensors, const state_t *state);

/* The pieces of a step, for the host tests. */
void entropilotObservation(const state_t *state, const sensorData_t *sensors, const float target[3],
                           const float previousAction[ENTROPILOT_ACTION_SIZE], float maxPositionError,
                           float observation[ENTROPILOT_OBSERVATION_SIZE]);
void entropilotRateSetpoint(const float action[ENTROPILOT_ACTION_SIZE], setpoint_t *rates);
void entropilotMotorForces(const float action[ENTROPILOT_ACTION_SIZE], control_t *control);
bool entropilotAllFinite(const float *values, int count);

#endif
