/* entropilot on the Crazyflie: observation, scheduling and action mapping (see entropilot_app.h). */
#include "entropilot_app.h"

#include <math.h> /* isfinite: a classification macro, no library call */
#include <string.h>

#define RAD_PER_DEG 0.0174532925f
#define DEG_PER_RAD 57.2957795f

#ifndef ENTROPILOT_MAX_POSITION_ERROR
#define ENTROPILOT_MAX_POSITION_ERROR 0.5f /* m: the hover task's start box (+-0.5 m around the target) */
#endif

static const float hoverAction[ENTROPILOT_ACTION_SIZE] = ENTROPILOT_HOVER_ACTION;

void entropilotAppInit(entropilotApp_t *app)
{
  memset(app, 0, sizeof(*app));
  app->maxPositionError = ENTROPILOT_MAX_POSITION_ERROR;
}

bool entropilotAllFinite(const float *values, int count)
{
  for (int i = 0; i < count; i++) {
    if (!isfinite(values[i])) {
      return false;
    }
  }
  return true;
}

static float clampAbs(float value, float limit)
{
  if (limit <= 0.0f) {
    return value;
  }
  return value > limit ? limit : (value < -limit ? -limit : value); /* a NaN stays NaN, for the finiteness check */
}

void entropilotObservation(const state_t *state, const sensorData_t *sensors, const float target[3],
                           const float previousAction[ENTROPILOT_ACTION_SIZE], float maxPositionError,
                           float observation[ENTROPILOT_OBSERVATION_SIZE])
{
  float *p = observation + ENTROPILOT_OBS_POS_ERR;
  p[0] = clampAbs(state->position.x - target[0], maxPositionError);
  p[1] = clampAbs(state->position.y - target[1], maxPositionError);
  p[2] = clampAbs(state->position.z - target[2], maxPositionError);

  /* Body-to-world rotation, row-major, from the estimator's quaternion as kalmanCoreFinalize forms its R. */
  const float w = state->attitudeQuaternion.w, x = state->attitudeQuaternion.x;
  const float y = state->attitudeQuaternion.y, z = state->attitudeQuaternion.z;
  float *r = observation + ENTROPILOT_OBS_ROTATION;
  r[0] = w * w + x * x - y * y - z * z;
  r[1] = 2.0f * x * y - 2.0f * w * z;
  r[2] = 2.0f * x * z + 2.0f * w * y;
  r[3] = 2.0f * x * y + 2.0f * w * z;
  r[4] = w * w - x * x + y * y - z * z;
  r[5] = 2.0f * y * z - 2.0f * w * x;
  r[6] = 2.0f * x * z - 2.0f * w * y;
  r[7] = 2.0f * y * z + 2.0f * w * x;
  r[8] = w * w - x * x - y * y + z * z;

  float *v = observation + ENTROPILOT_OBS_VELOCITY;
  v[0] = state->velocity.x;
  v[1] = state->velocity.y;
  v[2] = state->velocity.z;

  float *rates = observation + ENTROPILOT_OBS_BODY_RATES; /* deg/s -> rad/s, same axes */
  rates[0] = sensors->gyro.x * RAD_PER_DEG;
  rates[1] = sensors->gyro.y * RAD_PER_DEG;
  rates[2] = sensors->gyro.z * RAD_PER_DEG;

  memcpy(observation + ENTROPILOT_OBS_PREV_ACTION, previousAction, sizeof(float) * ENTROPILOT_ACTION_SIZE);
}

void entropilotRateSetpoint(const float action[ENTROPILOT_ACTION_SIZE], setpoint_t *rates)
{
  /* What the commander's RPYT decoder makes of the ground link's setpoint in rate mode (crtp_commander_rpyt.c):
   * roll and pitch as rates, yaw as a rate (the stock controller integrates it into its yaw target), no position
   * control. The rate controller tracks -gyro.y for pitch (controller_pid.c: "-sensors->gyro.y"), so a body-y rate
   * is commanded with the opposite sign; roll and yaw rates keep theirs. */
  memset(rates, 0, sizeof(*rates));
  rates->mode.x = modeDisable;
  rates->mode.y = modeDisable;
  rates->mode.z = modeDisable;
  rates->mode.roll = modeVelocity;
  rates->mode.pitch = modeVelocity;
  rates->mode.yaw = modeVelocity;
  const float scale = ENTROPILOT_MAX_BODY_RATE * DEG_PER_RAD;
  rates->attitudeRate.roll = action[1] * scale;
  rates->attitudeRate.pitch = -action[2] * scale;
  rates->attitudeRate.yaw = action[3] * scale;

  float fraction = (action[0] + 1.0f) * 0.5f;
  fraction = fraction < 0.0f ? 0.0f : (fraction > 1.0f ? 1.0f : fraction);
  const float thrust = (float)(uint32_t)(fraction * ENTROPILOT_THRUST_SCALE + 0.5f); /* the link's uint16 */
  rates->thrust = thrust < ENTROPILOT_THRUST_MIN ? 0.0f : (thrust > ENTROPILOT_THRUST_MAX ? ENTROPILOT_THRUST_MAX : thrust);
}

void entropilotMotorForces(const float action[ENTROPILOT_ACTION_SIZE], control_t *control)
{
  /* Our rotors 0..3 are front-right, back-right, back-left, front-left: the firmware's M1..M4 (the signs of its
   * mixer in power_distribution_quadrotor.c). normalizedForces is each motor's share of its full PWM range. */
  control->controlMode = controlModeForce;
  for (int i = 0; i < ENTROPILOT_ACTION_SIZE; i++) {
    const float force = (action[i] + 1.0f) * 0.5f;
    control->normalizedForces[i] = force < 0.0f ? 0.0f : (force > 1.0f ? 1.0f : force);
  }
}

static entropilotDecision_t handBack(entropilotApp_t *app)
{
  app->enable = 0;
  app->engaged = 0;
  app->faults++;
  return entropilotStock;
}

entropilotDecision_t entropilotAppStep(entropilotApp_t *app, control_t *control, const setpoint_t *setpoint,
                                       const sensorData_t *sensors, const state_t *state)
{
  const bool positionSetpoint =
      setpoint->mode.x == modeAbs && setpoint->mode.y == modeAbs && setpoint->mode.z == modeAbs;
  if (!app->enable || !positionSetpoint) {
    app->engaged = 0;
    return entropilotStock;
  }
  if (!app->engaged) {
    app->engaged = 1;
    app->steps = 0;
    app->phase = ENTROPILOT_TICK_HZ - ENTROPILOT_CONTROL_HZ; /* the policy runs on the first tick */
    memcpy(app->action, hoverAction, sizeof(app->action));
  }

  app->phase += ENTROPILOT_CONTROL_HZ;
  if (app->phase >= ENTROPILOT_TICK_HZ) { /* every 1000/CONTROL_HZ ticks on average (20 or 21 at 48 Hz) */
    app->phase -= ENTROPILOT_TICK_HZ;
    const float target[3] = {setpoint->position.x, setpoint->position.y, setpoint->position.z};
    entropilotObservation(state, sensors, target, app->action, app->maxPositionError, app->observation);
    if (!entropilotAllFinite(app->observation, ENTROPILOT_OBSERVATION_SIZE)) {
      return handBack(app);
    }
    float action[ENTROPILOT_ACTION_SIZE];
    entropilot_policy(app->observation, action);
    if (!entropilotAllFinite(action, ENTROPILOT_ACTION_SIZE)) {
      return handBack(app);
    }
    memcpy(app->action, action, sizeof(action));
    app->steps++;
  }

#ifdef ENTROPILOT_ACTION_MODE_CTBR
  (void)control;
  entropilotRateSetpoint(app->action, &app->rates);
  return entropilotRates;
#else
  entropilotMotorForces(app->action, control);
  return entropilotMotors;
#endif
}
