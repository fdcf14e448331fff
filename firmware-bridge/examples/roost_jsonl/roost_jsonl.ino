// Roost line-delimited JSON protocol: the device side (docs/serial.md).
//
// An Arduino sketch for any board with a serial port: a relay on pin 7 (channel "pump"), a
// PWM lamp on pin 9 ("lamp"), a door contact on pin 2 to ground ("door"), a soil moisture
// sensor on A0 ("soil"), and a bell on pin 8 pulsed on "press" ("bell"). The node's config
// names the same channels as the device's entities. No library needed: the sketch reads
// the few fields it needs from each line by hand.
//
// Device -> node:  {"type":"hello","firmware":"..."}  {"type":"state","channel":"pump","value":true}
// Node -> device:  {"type":"query"}  {"type":"set","channel":"pump","value":true}
//                  {"type":"set","channel":"lamp","value":128}  {"type":"press","channel":"bell","ms":200}

const int PUMP_PIN = 7;
const int LAMP_PIN = 9;
const int DOOR_PIN = 2;
const int SOIL_PIN = A0;
const int BELL_PIN = 8;

const unsigned long SOIL_EVERY_MS = 10000;  // a reading every 10 s
const unsigned long DEBOUNCE_MS = 20;       // the door contact must hold this long

bool pumpOn = false;
int lampLevel = 0;
bool doorOpen = false;
bool doorSeen = false;
unsigned long doorSince = 0;
unsigned long lastSoil = 0;
unsigned long bellUntil = 0;
String line;

void sendBool(const char *channel, bool value) {
  Serial.print(F("{\"type\":\"state\",\"channel\":\""));
  Serial.print(channel);
  Serial.print(F("\",\"value\":"));
  Serial.print(value ? F("true") : F("false"));
  Serial.println(F("}"));
}

void sendNumber(const char *channel, long value) {
  Serial.print(F("{\"type\":\"state\",\"channel\":\""));
  Serial.print(channel);
  Serial.print(F("\",\"value\":"));
  Serial.print(value);
  Serial.println(F("}"));
}

void sendAll() {
  Serial.println(F("{\"type\":\"hello\",\"firmware\":\"roost_jsonl example 1\"}"));
  sendBool("pump", pumpOn);
  sendNumber("lamp", lampLevel);
  sendBool("door", doorOpen);
  sendNumber("soil", analogRead(SOIL_PIN));
}

// The text after "key": in line, up to the next ',' or '}' (quotes removed).
String field(const String &text, const char *key) {
  String pattern = String("\"") + key + "\":";
  int start = text.indexOf(pattern);
  if (start < 0) return String();
  start += pattern.length();
  int end = start;
  while (end < (int)text.length() && text[end] != ',' && text[end] != '}') end++;
  String value = text.substring(start, end);
  value.trim();
  value.replace("\"", "");
  return value;
}

void handle(const String &text) {
  String type = field(text, "type");
  String channel = field(text, "channel");
  String value = field(text, "value");
  if (type == "query") {
    sendAll();
  } else if (type == "set" && channel == "pump") {
    pumpOn = (value == "true");
    digitalWrite(PUMP_PIN, pumpOn ? HIGH : LOW);
    sendBool("pump", pumpOn);
  } else if (type == "set" && channel == "lamp") {
    lampLevel = (value == "true") ? 255 : (value == "false") ? 0 : constrain(value.toInt(), 0, 255);
    analogWrite(LAMP_PIN, lampLevel);
    sendNumber("lamp", lampLevel);
  } else if (type == "press" && channel == "bell") {
    digitalWrite(BELL_PIN, HIGH);
    bellUntil = millis() + field(text, "ms").toInt();
  } else {
    Serial.print(F("{\"type\":\"error\",\"message\":\"cannot do: "));
    Serial.print(type);
    Serial.print(' ');
    Serial.print(channel);
    Serial.println(F("\"}"));
  }
}

void setup() {
  pinMode(PUMP_PIN, OUTPUT);
  pinMode(LAMP_PIN, OUTPUT);
  pinMode(BELL_PIN, OUTPUT);
  pinMode(DOOR_PIN, INPUT_PULLUP);
  Serial.begin(115200);
  doorOpen = digitalRead(DOOR_PIN) == HIGH;  // the contact pulls to ground when closed
  sendAll();
}

void loop() {
  while (Serial.available() > 0) {
    char c = Serial.read();
    if (c == '\n') {
      handle(line);
      line = "";
    } else if (c != '\r' && line.length() < 1024) {
      line += c;
    }
  }

  bool open = digitalRead(DOOR_PIN) == HIGH;
  if (open != doorOpen) {
    if (!doorSeen) {
      doorSeen = true;
      doorSince = millis();
    } else if (millis() - doorSince >= DEBOUNCE_MS) {
      doorOpen = open;
      doorSeen = false;
      sendBool("door", doorOpen);
    }
  } else {
    doorSeen = false;
  }

  if (bellUntil != 0 && (long)(millis() - bellUntil) >= 0) {
    digitalWrite(BELL_PIN, LOW);
    bellUntil = 0;
  }

  if (millis() - lastSoil >= SOIL_EVERY_MS) {
    lastSoil = millis();
    sendNumber("soil", analogRead(SOIL_PIN));
  }
}
