/* entropilot's out-of-tree controller for the Crazyflie firmware (CONFIG_CONTROLLER_OOT, the entry points of
 * modules/interface/controller/controller.h): the exported policy flies while parameter entropilot.enable is 1 and
 * the commander holds a position setpoint; the stock PID controller flies everything else, and its rate loop tracks
 * a ctbr policy's rates and thrust. Select it with parameter stabilizer.controller = 6 (ControllerTypeOot) if the
 * firmware does not pick it by itself. */
#include <stdbool.h>
#include <stdint.h>

#include "controller.h"
#include "controller_pid.h"
#include "entropilot_app.h"
#include "log.h"
#include "param.h"

static entropilotApp_t app;

void controllerOutOfTreeInit(void)
{
  controllerPidInit();
  entropilotAppInit(&app);
}

bool controllerOutOfTreeTest(void)
{
  return controllerPidTest();
}

void controllerOutOfTree(control_t *control, const setpoint_t *setpoint, const sensorData_t *sensors,
                         const state_t *state, const stabilizerStep_t stabilizerStep)
{
  switch (entropilotAppStep(&app, control, setpoint, sensors, state)) {
  case entropilotRates:
    controllerPid(control, &app.rates, sensors, state, stabilizerStep);
    break;
  case entropilotMotors:
    break; /* control holds the motor forces */
  default:
    controllerPid(control, setpoint, sensors, state, stabilizerStep);
    break;
  }
}

/**
 * entropilot policy (generated C, see policy.h)
 */
PARAM_GROUP_START(entropilot)
/**
 * @brief 1: the policy flies whenever the commander holds a position setpoint (0: stock controller only). A
 * non-finite observation or action sets it back to 0.
 */
PARAM_ADD(PARAM_UINT8, enable, &app.enable)
/**
 * @brief Clamp of each position error the policy sees [m] (0: none)
 */
PARAM_ADD(PARAM_FLOAT, maxPosErr, &app.maxPositionError)
PARAM_GROUP_STOP(entropilot)

LOG_GROUP_START(entropilot)
LOG_ADD(LOG_UINT8, engaged, &app.engaged)
LOG_ADD(LOG_UINT32, steps, &app.steps)
LOG_ADD(LOG_UINT32, faults, &app.faults)
LOG_ADD(LOG_FLOAT, a0, &app.action[0])
LOG_ADD(LOG_FLOAT, a1, &app.action[1])
LOG_ADD(LOG_FLOAT, a2, &app.action[2])
LOG_ADD(LOG_FLOAT, a3, &app.action[3])
LOG_GROUP_STOP(entropilot)
