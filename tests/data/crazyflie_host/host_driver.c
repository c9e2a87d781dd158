/* The app's C entry points behind flat arrays, for tests/test_crazyflie_app.py (ctypes): the firmware's structs are
 * filled here, from the stand-in stabilizer_types.h or the firmware's own when the test compiles against it. */
#include <string.h>

#include "entropilot_app.h"

static entropilotApp_t app;
static control_t control;

/* state: position[3] (m), velocity[3] (m/s), quaternion w x y z, gyro[3] (deg/s) */
static void fill(const float *in, state_t *state, sensorData_t *sensors)
{
  memset(state, 0, sizeof(*state));
  memset(sensors, 0, sizeof(*sensors));
  state->position.x = in[0], state->position.y = in[1], state->position.z = in[2];
  state->velocity.x = in[3], state->velocity.y = in[4], state->velocity.z = in[5];
  state->attitudeQuaternion.w = in[6], state->attitudeQuaternion.x = in[7];
  state->attitudeQuaternion.y = in[8], state->attitudeQuaternion.z = in[9];
  sensors->gyro.x = in[10], sensors->gyro.y = in[11], sensors->gyro.z = in[12];
}

void host_observation(const float *in, const float *target, const float *previous, float maxError, float *obs)
{
  state_t state;
  sensorData_t sensors;
  fill(in, &state, &sensors);
  entropilotObservation(&state, &sensors, target, previous, maxError, obs);
}

/* out: modes x y z roll pitch yaw, then attitudeRate roll pitch yaw, thrust */
void host_rate_setpoint(const float *action, int *modes, float *out)
{
  setpoint_t rates;
  entropilotRateSetpoint(action, &rates);
  const stab_mode_t m[6] = {rates.mode.x, rates.mode.y, rates.mode.z, rates.mode.roll, rates.mode.pitch, rates.mode.yaw};
  for (int i = 0; i < 6; i++) modes[i] = (int)m[i];
  out[0] = rates.attitudeRate.roll, out[1] = rates.attitudeRate.pitch, out[2] = rates.attitudeRate.yaw;
  out[3] = rates.thrust;
}

int host_motor_forces(const float *action, float *forces)
{
  control_t c;
  memset(&c, 0, sizeof(c));
  entropilotMotorForces(action, &c);
  memcpy(forces, c.normalizedForces, sizeof(c.normalizedForces));
  return (int)c.controlMode;
}

void host_app_init(unsigned char enable, float maxError)
{
  entropilotAppInit(&app);
  app.enable = enable;
  app.maxPositionError = maxError;
}

void host_app_enable(unsigned char enable)
{
  app.enable = enable;
}

/* One stabilizer tick with a position (positionMode 1) or a manual attitude setpoint (0); returns the decision. */
int host_app_tick(int positionMode, const float *target, const float *in)
{
  setpoint_t setpoint;
  state_t state;
  sensorData_t sensors;
  memset(&setpoint, 0, sizeof(setpoint));
  const stab_mode_t m = positionMode ? modeAbs : modeDisable;
  setpoint.mode.x = m, setpoint.mode.y = m, setpoint.mode.z = m;
  setpoint.mode.roll = positionMode ? modeDisable : modeAbs, setpoint.mode.pitch = setpoint.mode.roll;
  setpoint.position.x = target[0], setpoint.position.y = target[1], setpoint.position.z = target[2];
  fill(in, &state, &sensors);
  return (int)entropilotAppStep(&app, &control, &setpoint, &sensors, &state);
}

/* engaged, enable, then steps and faults; the latest observation and action */
void host_app_read(unsigned int *counters, float *observation, float *action)
{
  counters[0] = app.engaged, counters[1] = app.enable, counters[2] = app.steps, counters[3] = app.faults;
  memcpy(observation, app.observation, sizeof(app.observation));
  memcpy(action, app.action, sizeof(app.action));
}
