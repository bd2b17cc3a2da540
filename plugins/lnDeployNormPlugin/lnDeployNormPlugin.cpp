// IPluginV3 LnDeployNorm / LnDeploySkipNorm: field handling, shape and type rules, enqueue into
// libln_kernels.so. Every noexcept entry point catches and logs; none lets an exception out.
#include "lnDeployNormPlugin.h"

#include <cmath>
#include <cstring>
#include <exception>
#include <iostream>
#include <mutex>
#include <sstream>
#include <stdexcept>

using namespace nvinfer1;

namespace ln_deploy
{
namespace plugin
{
namespace
{
// Set by setLoggerFinder (TensorRT calls it right after dlopen); the first non-null finder wins.
std::mutex gLoggerMutex;
ILoggerFinder* gLoggerFinder = nullptr;

ILogger* findLogger()
{
    std::lock_guard<std::mutex> lock(gLoggerMutex);
    return gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
}

void logMessage(ILogger::Severity severity, std::string const& msg)
{
    ILogger* logger = findLogger();
    if (logger != nullptr)
        logger->log(severity, msg.c_str());
    else if (severity <= ILogger::Severity::kWARNING)
        std::cerr << msg << std::endl;
}

void logError(char const* where, char const* what)
{
    logMessage(ILogger::Severity::kERROR, std::string("ln_deploy plugin: ") + where + ": " + what);
}

#define LN_CATCH_ALL(where, fail)                                                                                      \
    catch (std::exception const& e)                                                                                    \
    {                                                                                                                  \
        logError(where, e.what());                                                                                     \
        return fail;                                                                                                   \
    }                                                                                                                  \
    catch (...)                                                                                                        \
    {                                                                                                                  \
        logError(where, "unknown exception");                                                                          \
        return fail;                                                                                                   \
    }

constexpr PluginFieldType kFieldType_int32 = PluginFieldType::kINT32;
constexpr PluginFieldType kFieldType_float32 = PluginFieldType::kFLOAT32;

int32_t toLnDtype(DataType t)
{
    switch (t)
    {
    case DataType::kFLOAT: return LN_DTYPE_F32;
    case DataType::kHALF: return LN_DTYPE_F16;
    case DataType::kBF16: return LN_DTYPE_BF16;
    default: return -1;
    }
}

bool isFloatType(DataType t) { return toLnDtype(t) >= 0; }

void require(bool ok, std::string const& msg)
{
    if (!ok)
        throw std::invalid_argument(msg);
}
} // namespace

void setLoggerFinderOnce(ILoggerFinder* finder)
{
    std::lock_guard<std::mutex> lock(gLoggerMutex);
    if (gLoggerFinder == nullptr && finder != nullptr)
        gLoggerFinder = finder;
}

std::vector<FieldDesc> const& fieldTable(Variant v)
{
#define LN_DEPLOY_FIELD_DESC(name, type, def) FieldDesc{#name, kFieldType_##type, offsetof(NormFields, name)},
    static std::vector<FieldDesc> const norm{LN_DEPLOY_NORM_FIELDS(LN_DEPLOY_FIELD_DESC)};
    static std::vector<FieldDesc> const skipNorm{LN_DEPLOY_SKIPNORM_FIELDS(LN_DEPLOY_FIELD_DESC)};
#undef LN_DEPLOY_FIELD_DESC
    return v == Variant::kSkipNorm ? skipNorm : norm;
}

char const* pluginName(Variant v)
{
    return v == Variant::kSkipNorm ? kSkipNormPluginName : kNormPluginName;
}

NormFields parseFields(Variant v, PluginFieldCollection const* fc)
{
    NormFields f;
    auto const& table = fieldTable(v);
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
    {
        PluginField const& pf = fc->fields[i];
        require(pf.name != nullptr, "a field without a name");
        FieldDesc const* d = nullptr;
        for (auto const& row : table)
            if (std::strcmp(row.name, pf.name) == 0)
                d = &row;
        if (d == nullptr)
        {
            // The ONNX parser passes every node attribute; one we do not know is not an error.
            logMessage(ILogger::Severity::kWARNING,
                std::string("ln_deploy plugin: ignoring unknown field '") + pf.name + "' of " + pluginName(v));
            continue;
        }
        require(pf.type == d->type && pf.length == 1 && pf.data != nullptr,
            std::string("field '") + pf.name + "' must be one " + (d->type == kFieldType_int32 ? "int32" : "float32"));
        std::memcpy(reinterpret_cast<char*>(&f) + d->offset, pf.data, 4);
    }
    require(f.kind == kKindLayerNorm || f.kind == kKindRmsNorm, "kind must be 0 (LayerNorm) or 1 (RMSNorm)");
    require(std::isfinite(f.epsilon) && f.epsilon >= 0.0f, "epsilon must be finite and >= 0");
    require(f.num_normalized_dims >= 1 && f.num_normalized_dims <= Dims::MAX_DIMS, "num_normalized_dims must be >= 1");
    require(f.batch_invariant == 0 || f.batch_invariant == 1, "batch_invariant must be 0 or 1");
    require(f.output_sum == 0 || (f.output_sum == 1 && v == Variant::kSkipNorm), "output_sum must be 0 or 1 (SkipNorm only)");
    return f;
}

// ---- LnDeployNormPlugin ---------------------------------------------------------------------

LnDeployNormPlugin::LnDeployNormPlugin(Variant variant, NormFields const& fields)
    : mVariant(variant)
    , mFields(fields)
{
}

LnDeployNormPlugin::LnDeployNormPlugin(LnDeployNormPlugin const& other)
    : mVariant(other.mVariant)
    , mFields(other.mFields)
    , mNbInputs(other.mNbInputs)
    , mRows(other.mRows)
    , mHidden(other.mHidden)
{
    // mDataToSerialize points into its owner's mFields: rebuilt on demand, never copied.
}

// IPluginV3

IPluginCapability* LnDeployNormPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    try
    {
        switch (type)
        {
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }
    LN_CATCH_ALL("getCapabilityInterface", nullptr)
}

IPluginV3* LnDeployNormPlugin::clone() noexcept
{
    try
    {
        return new LnDeployNormPlugin(*this);
    }
    LN_CATCH_ALL("clone", nullptr)
}

// IPluginV3OneCore

char const* LnDeployNormPlugin::getPluginName() const noexcept { return pluginName(mVariant); }
char const* LnDeployNormPlugin::getPluginVersion() const noexcept { return kPluginVersion; }
char const* LnDeployNormPlugin::getPluginNamespace() const noexcept { return kPluginNamespace; }

// IPluginV3OneBuild

int32_t LnDeployNormPlugin::getNbOutputs() const noexcept
{
    return mVariant == Variant::kSkipNorm && mFields.output_sum ? 2 : 1;
}

int32_t LnDeployNormPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    try
    {
        require(nbOutputs == getNbOutputs() && nbInputs >= 1, "wrong number of inputs or outputs");
        require(isFloatType(inputTypes[0]), "x must be float32, float16 or bfloat16");
        // Outputs take x's type: TensorRT 11 is strongly typed, the graph decides precision.
        for (int32_t i = 0; i < nbOutputs; ++i)
            outputTypes[i] = inputTypes[0];
        return 0;
    }
    LN_CATCH_ALL("getOutputDataTypes", -1)
}

int32_t LnDeployNormPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& /*exprBuilder*/) noexcept
{
    try
    {
        require(nbOutputs == getNbOutputs() && nbInputs >= 1, "wrong number of inputs or outputs");
        require(inputs[0].nbDims >= mFields.num_normalized_dims, "x has fewer axes than num_normalized_dims");
        // y (and the residual sum) have x's shape.
        for (int32_t i = 0; i < nbOutputs; ++i)
            outputs[i] = inputs[0];
        return 0;
    }
    LN_CATCH_ALL("getOutputShapes", -1)
}

bool LnDeployNormPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    try
    {
        int32_t const minInputs = mVariant == Variant::kSkipNorm ? 3 : 2;
        if (nbInputs < minInputs || nbInputs > minInputs + 1 || nbOutputs != getNbOutputs() || pos < 0
            || pos >= nbInputs + nbOutputs)
            return false;
        PluginTensorDesc const& d = inOut[pos].desc;
        if (d.format != TensorFormat::kLINEAR)
            return false;
        DataType const x = inOut[0].desc.type;
        if (pos == 0)
            return isFloatType(d.type);
        if (pos == scaleIndex())
            return d.type == x || d.type == DataType::kFLOAT; // scale in x's type or fp32
        if (pos == scaleIndex() + 1 && pos < nbInputs)
            return d.type == inOut[scaleIndex()].desc.type; // bias in scale's type
        return d.type == x; // residual and outputs in x's type
    }
    LN_CATCH_ALL("supportsFormatCombination", false)
}

void LnDeployNormPlugin::checkInputs(Dims const* dims, int32_t nbInputs) const
{
    int32_t const minInputs = mVariant == Variant::kSkipNorm ? 3 : 2;
    require(nbInputs == minInputs || nbInputs == minInputs + 1,
        std::string(pluginName(mVariant)) + (mVariant == Variant::kSkipNorm ? " takes x, residual, scale[, bias]"
                                                                            : " takes x, scale[, bias]"));
    int32_t const k = mFields.num_normalized_dims;
    require(dims[0].nbDims >= k, "x has fewer axes than num_normalized_dims");
    // Static extents only: a -1 (dynamic at build time) is checked again in onShapeChange.
    int64_t hidden = 1;
    bool known = true;
    for (int32_t i = dims[0].nbDims - k; i < dims[0].nbDims; ++i)
    {
        known = known && dims[0].d[i] >= 0;
        hidden *= dims[0].d[i];
    }
    for (int32_t in = scaleIndex(); in < nbInputs; ++in)
    {
        int64_t vol = 1;
        bool knownIn = true;
        for (int32_t i = 0; i < dims[in].nbDims; ++i)
        {
            knownIn = knownIn && dims[in].d[i] >= 0;
            vol *= dims[in].d[i];
        }
        require(!known || !knownIn || vol == hidden, "scale/bias must hold one value per normalized element");
    }
    if (mVariant == Variant::kSkipNorm)
    {
        require(dims[1].nbDims == dims[0].nbDims, "residual must have x's shape");
        for (int32_t i = 0; i < dims[0].nbDims; ++i)
            require(dims[0].d[i] < 0 || dims[1].d[i] < 0 || dims[0].d[i] == dims[1].d[i], "residual must have x's shape");
    }
}

int32_t LnDeployNormPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    try
    {
        require(nbOutputs == getNbOutputs(), "wrong number of outputs");
        std::vector<Dims> dims(nbInputs);
        for (int32_t i = 0; i < nbInputs; ++i)
            dims[i] = in[i].desc.dims;
        checkInputs(dims.data(), nbInputs);
        return 0;
    }
    LN_CATCH_ALL("configurePlugin", -1)
}

size_t LnDeployNormPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return ln_workspace_bytes(mFields.batch_invariant);
}

// IPluginV3OneRuntime

int32_t LnDeployNormPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    try
    {
        require(nbOutputs == getNbOutputs(), "wrong number of outputs");
        std::vector<Dims> dims(nbInputs);
        for (int32_t i = 0; i < nbInputs; ++i)
            dims[i] = in[i].dims;
        checkInputs(dims.data(), nbInputs);
        Dims const& x = in[0].dims;
        int32_t const k = mFields.num_normalized_dims;
        int64_t rows = 1;
        int64_t hidden = 1;
        for (int32_t i = 0; i < x.nbDims; ++i)
            (i < x.nbDims - k ? rows : hidden) *= x.d[i];
        require(hidden >= 1 && hidden <= LN_MAX_HIDDEN, "normalized size out of range (1 .. 2^24)");
        mNbInputs = nbInputs;
        mRows = rows;
        mHidden = hidden;
        return 0;
    }
    LN_CATCH_ALL("onShapeChange", -1)
}

int32_t LnDeployNormPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    try
    {
        bool const skip = mVariant == Variant::kSkipNorm;
        int32_t const s = scaleIndex();
        ln_norm_args a{};
        a.x = inputs[0];
        a.residual = skip ? inputs[1] : nullptr;
        a.scale = inputs[s];
        a.bias = mNbInputs > s + 1 ? inputs[s + 1] : nullptr;
        a.y = outputs[0];
        a.sum_out = skip && mFields.output_sum ? outputs[1] : nullptr;
        a.rows = mRows;
        a.hidden = mHidden;
        a.epsilon = mFields.epsilon;
        a.kind = mFields.kind;
        a.dtype = toLnDtype(inputDesc[0].type);
        a.scale_dtype = toLnDtype(inputDesc[s].type);
        a.batch_invariant = mFields.batch_invariant;
        a.workspace = workspace;
        a.workspace_bytes = ln_workspace_bytes(mFields.batch_invariant);
        int const rc = ln_norm_forward(&a, stream);
        if (rc != 0)
        {
            std::ostringstream msg;
            msg << ln_error_name(rc) << ": " << ln_error_string(rc);
            logError("enqueue", msg.str().c_str());
        }
        return rc;
    }
    LN_CATCH_ALL("enqueue", -1)
}

IPluginV3* LnDeployNormPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    // No per-context resources: each execution context gets its own copy.
    return clone();
}

PluginFieldCollection const* LnDeployNormPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        mDataToSerialize.clear();
        for (auto const& d : fieldTable(mVariant))
            mDataToSerialize.emplace_back(d.name, reinterpret_cast<char const*>(&mFields) + d.offset, d.type, 1);
        mFCToSerialize.nbFields = static_cast<int32_t>(mDataToSerialize.size());
        mFCToSerialize.fields = mDataToSerialize.data();
        return &mFCToSerialize;
    }
    LN_CATCH_ALL("getFieldsToSerialize", nullptr)
}

// ---- creators ---------------------------------------------------------------------------------

LnDeployNormPluginCreatorBase::LnDeployNormPluginCreatorBase(Variant variant)
    : mVariant(variant)
{
    for (auto const& d : fieldTable(variant))
        mFieldNames.emplace_back(d.name, nullptr, d.type, 1);
    mFC.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFC.fields = mFieldNames.data();
}

IPluginV3* LnDeployNormPluginCreatorBase::createPlugin(
    char const* /*name*/, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        // Build and runtime phases read the same fields (getFieldsToSerialize writes them all).
        return new LnDeployNormPlugin(mVariant, parseFields(mVariant, fc));
    }
    LN_CATCH_ALL("createPlugin", nullptr)
}

PluginFieldCollection const* LnDeployNormPluginCreatorBase::getFieldNames() noexcept { return &mFC; }
char const* LnDeployNormPluginCreatorBase::getPluginName() const noexcept { return pluginName(mVariant); }
char const* LnDeployNormPluginCreatorBase::getPluginVersion() const noexcept { return kPluginVersion; }
char const* LnDeployNormPluginCreatorBase::getPluginNamespace() const noexcept { return kPluginNamespace; }

} // namespace plugin
} // namespace ln_deploy

// ---- library entry points -----------------------------------------------------------------------

#ifdef LN_DEPLOY_STATIC_REGISTRATION
// Opt-in (CMake LN_DEPLOY_STATIC_REGISTRATION=ON) for trtexec --staticPlugins: registration when the
// library is loaded. Needs libnvinfer's getPluginRegistry, and IPluginRegistry::loadLibrary then
// refuses the library (its creators are already registered): off by default.
using ln_deploy::plugin::LnDeployNormPluginCreator;
using ln_deploy::plugin::LnDeploySkipNormPluginCreator;
REGISTER_TENSORRT_PLUGIN(LnDeployNormPluginCreator);
REGISTER_TENSORRT_PLUGIN(LnDeploySkipNormPluginCreator);
#endif

// For IPluginRegistry::loadLibrary / trtexec --dynamicPlugins / Polygraphy / version-compatible
// engines, as TensorRT's own plugin/vc/vfcCommon.cpp: nothing of libnvinfer is referenced, so the
// library loads in any process. LN_API (lnKernels.h) gives them default visibility; the version
// script lnDeployNormPlugin.map exports exactly these two.
extern "C" LN_API IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static ln_deploy::plugin::LnDeployNormPluginCreator normCreator;
    static ln_deploy::plugin::LnDeploySkipNormPluginCreator skipNormCreator;
    static IPluginCreatorInterface* const creators[] = {&normCreator, &skipNormCreator};
    nbCreators = 2;
    return creators;
}

extern "C" LN_API void setLoggerFinder(ILoggerFinder* finder)
{
    ln_deploy::plugin::setLoggerFinderOnce(finder);
}
